"""`WhisperASR`: Whisper's own encoder-decoder on mmtune's padded batches, the other model kind beside the bridge.

    model, tokenizer = build_model(cfg.model)      # cfg.model.whisper given: a WhisperASR (mmtune.model.build)
    out = model(**batch)                          # out.loss_sum, out.num_tokens, as the bridge gives them
    new_ids = model.generate(**prompt_batch, max_new_tokens=32)

A batch (`collate_padded`) has one clip per row:
    audio_features (B, n_mels, F)   padded input: F is the encoder's window (max_source_positions x 2
                                    mel frames, 3000 = 30 s), the stock WhisperEncoder runs on it;
                                    real input: F is the batch's longest clip, the encoder runs on each
                                    clip's real frames and the decoder's cross attention sees only those
    input_ids (B, T)                <|startoftranscript|> <|lang|> <|task|> <|notimestamps|> text <|endoftext|>
    labels (B, T)                   the decoder prompt masked; labels[t] is the target *for position t*
-> encoder (B, S, C) -> decoder (B, T, D) -> summed cross entropy at the supervised positions through
   proj_out, in chunks (`mmtune.model.loss`), never (B, T, V) logits.

What trains is decided when the model is built (`apply_whisper_plans`): the encoder and the decoder
are each frozen, LoRA-wrapped (peft's adapter layers injected in place, no wrapper class) or trained
in full. Generation with padded input is transformers' own `WhisperForConditionalGeneration.generate`,
so `mmtune transcribe` and a `transformers.pipeline` over the exported folder give the same text; with
real input it is greedy decoding over the masked cross attention.
"""

import copy

import peft
import torch
from torch import nn
from transformers import GenerationConfig
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

from mmtune.audio.encoder import encode_real_frames
from mmtune.config import ConfigError, LoraConfig
from mmtune.errors import DataError
from mmtune.model.bridge import MultimodalOutput
from mmtune.model.loss import CHUNK_ELEMENTS, chunked_loss, supervised_targets

PARTS = ("encoder", "decoder")  # WhisperModel's halves, each with its own plan
SOT, EOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
TASKS = ("transcribe", "translate")


def language_code(language: str, where: str = "model.whisper.language:") -> str:
    """"en", "english", "English" -> "en"; anything else is a ConfigError, `where` first, listing how to write one."""
    key = language.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ConfigError(f"{where} {language!r} is not a Whisper language; give a code such as en, hi, de or a name "
                      f"such as english, hindi (transformers' whisper LANGUAGES lists all {len(LANGUAGES)})")


def decoder_prompt(tokenizer, language: str | None, task: str) -> list[int]:
    """The decoder prompt that is never supervised: [<|startoftranscript|>, <|en|>, <|transcribe|>,
    <|notimestamps|>]; without a language (English-only `.en` models) [<|startoftranscript|>, <|notimestamps|>]."""
    tokens = [SOT] + ([f"<|{language_code(language)}|>", f"<|{task}|>"] if language else []) + [NO_TIMESTAMPS]
    ids = tokenizer.convert_tokens_to_ids(tokens)  # per row: not get_vocab(), a dict of the whole vocabulary
    missing = [t for t, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ConfigError(f"model.whisper.tokenizer: the tokenizer has no {', '.join(missing)} token: it is not a "
                          f"Whisper tokenizer (or not a multilingual one: then set model.whisper.language: null)")
    return ids


class WhisperASR(nn.Module):
    def __init__(self, whisper: nn.Module, encoder_input: str = "padded", whole_parts: set[str] | None = None,
                 loss_chunk_elements: int = CHUNK_ELEMENTS):
        super().__init__()
        self.whisper = whisper  # transformers WhisperForConditionalGeneration (LoRA layers injected where planned)
        self.encoder_input = encoder_input  # "padded" | "real"
        self.window = whisper.config.max_source_positions * 2  # mel frames the stock encoder takes (3000 = 30 s)
        # parts saved whole in checkpoints: {"whisper"} when built from a config (no base weights elsewhere)
        self.whole_parts = set(whole_parts or ())
        self.loss_chunk_elements = loss_chunk_elements

    @property
    def position_limit(self) -> int:
        """Decoder tokens the learned position table holds (448)."""
        return self.whisper.config.max_target_positions

    def enable_activation_checkpointing(self) -> None:
        """Recompute encoder and decoder layers in the backward pass instead of keeping their activations."""
        self.whisper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n_mels, F), (B,) -> encoder states (B, S, C) and which of them are real (B, S) bool, or None
        when every state is (padded input: the window, silence included, is what Whisper attends to)."""
        encoder = self.whisper.model.encoder
        if self.encoder_input == "padded":
            if features.shape[-1] != self.window:
                raise ValueError(f"padded encoder input must have {self.window} mel frames, got {features.shape[-1]}: "
                                 f"encode samples with mmtune.data.encode for this model")
            return encoder(features.to(encoder.conv1.weight.dtype)).last_hidden_state, None
        hidden, enc_lengths = encode_real_frames(encoder, features, lengths, self.training)  # (B, S, C), (B,)
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < enc_lengths.to(hidden.device)[:, None]
        return hidden, keep

    def decode(self, input_ids: torch.Tensor, encoder_states: torch.Tensor,
               encoder_keep: torch.Tensor | None) -> torch.Tensor:
        """input_ids (B, T), encoder states (B, S, C) -> decoder hidden states (B, T, D), causal, each row's
        cross attention limited to its clip's real states (`encoder_keep` (B, S)), no cache."""
        decoder = self.whisper.model.decoder
        T = input_ids.shape[1]
        if T > self.position_limit:
            raise ValueError(f"{T} decoder tokens exceed the {self.position_limit} positions of Whisper's decoder")
        h = decoder.embed_tokens(input_ids) + decoder.embed_positions(input_ids)  # (B, T, D): positions 0..T-1
        h = nn.functional.dropout(h, p=decoder.dropout, training=self.training)
        lowest = torch.finfo(h.dtype).min
        causal = torch.full((T, T), lowest, dtype=h.dtype, device=h.device).triu(1)[None, None]  # (1, 1, T, T)
        cross = None
        if encoder_keep is not None:  # (B, S) -> additive (B, 1, 1, S)
            cross = torch.zeros(encoder_keep.shape, dtype=h.dtype, device=h.device).masked_fill(~encoder_keep, lowest)
            cross = cross[:, None, None, :]
        for layer in decoder.layers:
            if self.training and decoder.layerdrop > 0.0 and float(torch.rand([])) < decoder.layerdrop:
                continue
            h = layer(h, causal, encoder_states, encoder_attention_mask=cross, cache=None, use_cache=False)
        return decoder.layer_norm(h)

    def forward(self, input_ids, labels=None, attention_mask=None, audio_features=None, audio_lengths=None,
                audio_owner=None, sources=None, **unused) -> MultimodalOutput:
        check_one_clip(input_ids.shape[0], audio_features, audio_owner, sources)
        states, keep = self.encode(audio_features, audio_lengths)
        hidden = self.decode(input_ids, states, keep)  # (B, T, D)
        head = self.whisper.get_output_embeddings()  # proj_out, tied to the decoder's embed_tokens
        if labels is None:
            return MultimodalOutput(logits=head(hidden))  # (B, T, V)
        keep_positions, targets = supervised_targets(labels)  # (B, T) bool, (N,)
        if targets.numel() == 0:
            raise DataError(", ".join(sources or []) or "this batch",
                            "no supervised token in the batch (every label is masked): each row needs a transcript")
        loss_sum = chunked_loss(hidden[keep_positions], targets, head, self.loss_chunk_elements)
        n = targets.numel()
        return MultimodalOutput(loss=loss_sum / n, loss_sum=loss_sum, num_tokens=n)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, audio_features=None, audio_lengths=None, audio_owner=None,
                 sources=None, max_new_tokens: int = 32, num_beams: int = 1, do_sample: bool = False,
                 eos_token_id=None, pad_token_id=None, **options) -> torch.Tensor:
        """Prompts (B, P) (the decoder prompt of each row, all of one length) + their clips -> new token ids
        (B, T_new); generation stops at <|endoftext|>."""
        check_one_clip(input_ids.shape[0], audio_features, audio_owner, sources)
        prompt_lengths = attention_mask.sum(1) if attention_mask is not None else None
        if prompt_lengths is not None and bool((prompt_lengths != input_ids.shape[1]).any()):
            raise ValueError("rows of one generation batch need decoder prompts of one length (one language form)")
        if self.encoder_input == "padded":
            return self._hf_generate(input_ids, audio_features, max_new_tokens, num_beams, do_sample, **options)
        if num_beams > 1 or do_sample:
            raise ConfigError("beam search and sampling need model.whisper.encoder_input: padded (transformers' "
                              "generate); real-frame input decodes greedily")
        return self._greedy(input_ids, audio_features, audio_lengths, max_new_tokens)

    def _hf_generate(self, prompts, features, max_new_tokens, num_beams, do_sample, **options) -> torch.Tensor:
        """transformers' Whisper generate, the prompt's language and task passed as it takes them."""
        config = self.whisper.generation_config
        id_to_language = {v: k[2:-2] for k, v in (config.lang_to_id or {}).items()}
        id_to_task = {v: k for k, v in (config.task_to_id or {}).items()}
        kwargs = {}
        if prompts.shape[1] == 4:  # <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>
            kwargs["language"] = [id_to_language[int(t)] for t in prompts[:, 1]]
            kwargs["task"] = id_to_task[int(prompts[0, 2])]
        generation = copy.deepcopy(config)  # the folder's max_length (for pipelines) gives way to max_new_tokens
        generation.update(max_length=None, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                          **{k: v for k, v in options.items() if k in ("temperature", "top_p")})
        out = self.whisper.generate(input_features=features.to(self.whisper.dtype), generation_config=generation,
                                    return_timestamps=False, **kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out  # (B, T_out)
        P = prompts.shape[1]
        if sequences.shape[1] >= P and bool((sequences[:, :P] == prompts).all()):
            sequences = sequences[:, P:]  # the prompt is given back in front of the new tokens
        return sequences

    def _greedy(self, prompts, features, lengths, max_new_tokens) -> torch.Tensor:
        """Greedy decoding over real-frame encoder states; rows that reached <|endoftext|> repeat it."""
        states, keep = self.encode(features, lengths)
        eot = self.whisper.generation_config.eos_token_id
        eot = eot[0] if isinstance(eot, list) else eot
        ids = prompts
        done = torch.zeros(prompts.shape[0], dtype=torch.bool, device=prompts.device)
        head = self.whisper.get_output_embeddings()
        for _ in range(min(max_new_tokens, self.position_limit - prompts.shape[1])):
            logits = head(self.decode(ids, states, keep)[:, -1])  # (B, V)
            next_ids = logits.argmax(-1).masked_fill(done, eot)  # (B,)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            done |= next_ids == eot
            if bool(done.all()):
                break
        return ids[:, prompts.shape[1]:]


def check_one_clip(rows: int, features, owner, sources) -> None:
    """A Whisper batch has exactly one clip per row, in row order."""
    if features is None or owner is None or len(owner) != rows or bool((owner.cpu() != torch.arange(rows)).any()):
        where = ", ".join(sources or []) or "a batch"
        raise DataError(where, "a Whisper model takes exactly one audio clip per row: its transcript is the row's text")


# ---- what trains -------------------------------------------------------------------------------------------


def apply_whisper_plans(whisper: nn.Module, plans: dict[str, str], lora: LoraConfig) -> None:
    """Freeze everything, inject LoRA into the linear layers of each `lora` part (peft, in place), then let
    each `full` part train whole; plans: {"encoder": plan, "decoder": plan}."""
    whisper.requires_grad_(False)
    targets = [name for part in PARTS if plans[part] == "lora" for name in lora_targets(whisper, part, lora)]
    if targets:
        config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                                 use_dora=lora.use_dora, use_rslora=lora.use_rslora)
        peft.inject_adapter_in_model(config, whisper)
        for name, p in whisper.named_parameters():
            p.requires_grad_("lora_" in name)
    for part in PARTS:
        if plans[part] == "full":
            getattr(whisper.model, part).requires_grad_(True)


def lora_targets(whisper: nn.Module, part: str, lora: LoraConfig) -> list[str]:
    """Full names of the part's linear layers that get LoRA (all of them, or those named in target_modules)."""
    prefix = f"model.{part}."
    linear = [n for n, m in whisper.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]
    if lora.target_modules == "all-linear":
        return linear
    chosen = [n for n in linear if n.rsplit(".", 1)[-1] in lora.target_modules]
    if not chosen:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ConfigError(f"model.lora.target_modules: none of {', '.join(lora.target_modules)} is in the Whisper "
                          f"{part} (its linear layers: {', '.join(names)}); name some of those, or give all-linear")
    return chosen


def merge_lora(module: nn.Module) -> nn.Module:
    """Merge every injected LoRA layer into its base layer and put the base layer back in its place."""
    for name, layer in list(module.named_modules()):
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, layer.get_base_layer())
    return module


# ---- generation settings -----------------------------------------------------------------------------------


def set_generation_config(whisper: nn.Module, tokenizer, language: str | None, task: str) -> None:
    """The generation config transformers' Whisper generate (and its pipeline) reads: the special token ids of
    this tokenizer, the language and task to transcribe in, and no timestamps. A pretrained model's own
    suppression lists stay; a model built from a config suppresses nothing."""
    vocab = tokenizer.get_vocab()
    config = whisper.generation_config or GenerationConfig()
    pretrained = bool(getattr(config, "lang_to_id", None))
    config.decoder_start_token_id = vocab[SOT]
    config.eos_token_id = config.pad_token_id = config.bos_token_id = vocab[EOT]
    config.no_timestamps_token_id = vocab[NO_TIMESTAMPS]
    config.lang_to_id = {f"<|{c}|>": vocab[f"<|{c}|>"] for c in LANGUAGES if f"<|{c}|>" in vocab}
    config.task_to_id = {t: vocab[f"<|{t}|>"] for t in TASKS if f"<|{t}|>" in vocab}
    config.is_multilingual = bool(config.lang_to_id) and language is not None
    config.language = language_code(language) if language else None
    config.task = task if config.is_multilingual else None
    config.forced_decoder_ids = None
    config._from_model_config = False  # else from_pretrained rebuilds it from the model config, ids and language lost
    if not pretrained:
        config.suppress_tokens = config.begin_suppress_tokens = None
    config.max_length = whisper.config.max_target_positions  # a pipeline's default 256 new tokens may not fit
    whisper.generation_config = config
    for key in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(whisper.config, key, getattr(config, key))
