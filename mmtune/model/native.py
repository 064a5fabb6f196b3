"""Native transformers architectures for a bridge: out (`mmtune export`) and in (`model.init_from`).

    vision bridge (CLIP/SigLIP tower, mlp projector, 2 layers)  <->  LlavaForConditionalGeneration
    speech bridge (Whisper encoder, stack_mlp projector)        <->  VoxtralForConditionalGeneration

Module by module (no key renaming by hand):

    mmtune                                   LLaVA                         Voxtral
    llm.<base_model_prefix>                  model.language_model          model.language_model
    llm's output embeddings                  lm_head                       lm_head
    vision_tower.model (its transformer)     model.vision_tower
    vision_projector.mlp.0 / .mlp.2          model.multi_modal_projector.linear_1 / linear_2
    audio_encoder.encoder (WhisperEncoder)                                 model.audio_tower
    audio_projector.linear_1 / .linear_2                                   model.multi_modal_projector.*

mmtune's tower keeps only the layers up to its feature layer, so an export writes a tower of that
many layers with vision_feature_layer -1 (the same features); an import keeps the layers the
folder's vision_feature_layer needs. Why Voxtral for speech: of transformers' audio-LLMs, its
encoder is Whisper's encoder unchanged (Qwen2-Audio and AudioFlamingo3 average-pool the frames
before the encoder's final layer norm) and its projector is frame stacking + an MLP, which
mmtune's `stack_mlp` projector computes. Voxtral pads every clip to 30 s windows (1500 / stack tokens
each); mmtune encodes the real frames of a clip unless model.audio.encoder_input is padded, so a model
trained on real frames agrees with its export on whole 30 s windows only (measured in BENCHMARKS.md,
"Native formats"), one trained padded on every clip.
"""

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          VoxtralConfig, VoxtralForConditionalGeneration, WhisperFeatureExtractor)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mmtune.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, MAX_FRAMES, N_FFT
from mmtune.audio.io import SAMPLE_RATE
from mmtune.config import ModelConfig
from mmtune.data.chat import template_takes_parts
from mmtune.errors import CheckpointError, MmtuneError
from mmtune.model.native_config import native_type
from mmtune.model.placeholders import PLACEHOLDERS
from mmtune.vision.preprocess import RESAMPLE, ImageSpec

log = logging.getLogger("mmtune")

# The processor's chat template: content given as parts ({"type": "image"}, {"type": "text", ...}) becomes
# mmtune's text (parts joined by newlines, media as placeholders), then the tokenizer's own template runs on it:
# as a string, or as one text part for a template that renders parts only (CONTENT). String content passes
# through, so the same template serves the tokenizer.
_CONTENT_WRAPPER = """{%- set ns = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message['content'] is string -%}
{%- set text = message['content'] -%}
{%- else -%}
{%- set parts = namespace(text=[]) -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}{%- set parts.text = parts.text + [part['text']] -%}
{%- elif part['type'] == 'image' -%}{%- set parts.text = parts.text + ['IMAGE'] -%}
{%- elif part['type'] == 'audio' -%}{%- set parts.text = parts.text + ['AUDIO'] -%}
{%- endif -%}
{%- endfor -%}
{%- set text = parts.text | join('\\n') -%}
{%- endif -%}
{%- set ns.messages = ns.messages + [dict(message, content=CONTENT)] -%}
{%- endfor -%}
{%- set messages = ns.messages -%}
""".replace("IMAGE", PLACEHOLDERS["image"]).replace("AUDIO", PLACEHOLDERS["audio"])
TEMPLATE_MARK = "{%- set ns = namespace(messages=[]) -%}"  # a template that already starts with the wrapper


class NativeExportError(MmtuneError):
    """The model has parts the native architecture cannot hold; the message says which and the way on."""


def native_format(cfg: ModelConfig) -> tuple[str | None, str]:
    """-> ("llava" | "voxtral", "") when the bridge maps onto that architecture, else (None, why not)."""
    if cfg.kind != "bridge":
        return None, "it is Whisper's encoder-decoder (exported as WhisperForConditionalGeneration)"
    if cfg.audio is not None and cfg.vision is not None:
        return None, "it has an audio and a vision tower, and no transformers architecture holds both with these parts"
    if cfg.vision is not None:
        p, v = cfg.vision.projector, cfg.vision
        if p.type != "mlp" or p.layers != 2 or p.hidden_size is not None:
            return None, (f"its vision projector is {p.type} ({p.layers} layers, hidden_size {p.hidden_size}); "
                          f"LLaVA's is mlp with 2 layers at the LLM's width")
        if v.max_tiles != 1:
            return None, f"it cuts images into tiles (model.vision.max_tiles {v.max_tiles}); LLaVA takes one square"
        return "llava", ""
    if cfg.audio is not None:
        p = cfg.audio.projector
        if p.type != "stack_mlp" or p.hidden_size is not None:
            return None, (f"its audio projector is {p.type}; Voxtral's is stack_mlp at the LLM's width "
                          f"(model.audio.projector.type: stack_mlp, stack: encoder_ffn_dim / d_model)")
        return "voxtral", ""
    return None, "it has no tower"


# ---- export -------------------------------------------------------------------------------------

def to_native(model, tokenizer, cfg: ModelConfig, image: ImageSpec | None = None, image_resize: str = "crop"):
    """A merged bridge (no LoRA wrappers) -> (LlavaForConditionalGeneration | VoxtralForConditionalGeneration,
    its processor | feature extractor). `image`, `image_resize`: the preprocessing mmtune applies (MediaSpec)."""
    kind, why = native_format(cfg)
    if kind is None:
        raise NativeExportError(f"this model cannot be written as a native transformers model: {why}; "
                                f"export it with --format llm (the LLM, its towers beside it)")
    if kind == "llava":
        return _to_llava(model, tokenizer, image, image_resize)
    return _to_voxtral(model, tokenizer, padded=cfg.audio.encoder_input == "padded")


def _to_llava(model, tokenizer, spec: ImageSpec, image_resize: str):
    tower, llm = model.vision_tower, model.llm
    family = "clip" if tower.has_cls else "siglip"
    vision_config = tower.model.config.to_dict()  # num_hidden_layers: the layers kept, up to the feature layer
    config = LlavaConfig(vision_config=vision_config, text_config=copy.deepcopy(llm.config),
                         image_token_id=model.token_ids["image"], image_seq_length=tower.num_tokens,
                         projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="default" if family == "clip" else "full",
                         multimodal_projector_bias=True, tie_word_embeddings=bool(llm.config.tie_word_embeddings))
    native = LlavaForConditionalGeneration(config).to(llm.dtype)
    _copy_llm(llm, native)
    _copy(_inner(native.model.vision_tower), _inner(tower.model), "the vision tower", skip=("post_layernorm.", "head."))
    mlp = model.vision_projector.mlp
    _copy(native.model.multi_modal_projector, {**_prefixed(mlp[0], "linear_1."), **_prefixed(mlp[2], "linear_2.")},
          "the projector")
    side = {"height": spec.size, "width": spec.size}
    images = LlavaImageProcessorPil(size={"shortest_edge": spec.size}, crop_size=side, do_pad=image_resize == "pad",
                                    image_mean=list(spec.mean), image_std=list(spec.std),
                                    resample=int(RESAMPLE[spec.resample]))
    tokenizer.chat_template = processor_template(tokenizer)  # one template in the folder serves both
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=tower.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=tokenizer.chat_template, image_token=PLACEHOLDERS["image"],
                               num_additional_image_tokens=1 if family == "clip" else 0)
    return native, processor


def _to_voxtral(model, tokenizer, padded: bool):
    encoder, llm, projector = model.audio_encoder.encoder, model.llm, model.audio_projector
    c = encoder.config
    if projector.stack * c.d_model != c.encoder_ffn_dim:
        raise NativeExportError(f"Voxtral stacks encoder_ffn_dim / d_model = {c.encoder_ffn_dim} / {c.d_model} frames "
                                f"per token; this model's stack_mlp projector stacks {projector.stack}: export with "
                                f"--format llm, or train with model.audio.projector.stack "
                                f"{c.encoder_ffn_dim // c.d_model}")
    if not (padded and model.audio_window == MAX_FRAMES):
        # Voxtral pads each clip to whole 30 s windows (BENCHMARKS.md "Native formats": the speech example trained
        # on its clips' own frames has WER 0.50 in mmtune and 2.16 through the export, which hears the padding)
        log.warning("Voxtral pads every clip to 30 s windows (%d mel frames) and this model was trained on %s: the "
                    "export computes what mmtune does on whole 30 s windows, and its transcripts of shorter clips "
                    "differ (train with model.audio.encoder_input: padded and window_seconds: 30 to match)",
                    MAX_FRAMES, f"windows of {model.audio_window} frames" if padded else "the clips' own frames")
    audio_config = dict(hidden_size=c.d_model, intermediate_size=c.encoder_ffn_dim, num_hidden_layers=c.encoder_layers,
                        num_attention_heads=c.encoder_attention_heads, num_mel_bins=c.num_mel_bins,
                        max_source_positions=c.max_source_positions, scale_embedding=c.scale_embedding,
                        activation_function=c.activation_function, vocab_size=c.vocab_size)
    # the LLM's config as an object: given as a dict, Voxtral fills the keys it lacks (head_dim, ...) with
    # Voxtral-Mini's values
    config = VoxtralConfig(audio_config=audio_config, text_config=copy.deepcopy(llm.config),
                           audio_token_id=model.token_ids["audio"], projector_hidden_act="gelu")
    native = VoxtralForConditionalGeneration(config).to(llm.dtype)
    _copy_llm(llm, native)
    _copy(native.model.audio_tower, encoder, "the audio encoder")
    _copy(native.model.multi_modal_projector, projector, "the projector")
    features = WhisperFeatureExtractor(feature_size=c.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                                       chunk_length=MAX_FRAMES // FRAMES_PER_SECOND, n_fft=N_FFT)
    return native, features


def write_full_text_config(folder: Path, text_config) -> None:
    """Rewrite config.json's text_config with every key of the LLM's config. save_pretrained writes only the
    keys that differ from the LLM class's defaults, and VoxtralConfig fills the keys a loaded text_config
    lacks with Voxtral-Mini's (head_dim 128, rms_norm_eps 1e-5, ...): the LLM would come back another shape."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    full = text_config.to_dict()
    if full.get("head_dim") is None:
        full["head_dim"] = text_config.hidden_size // text_config.num_attention_heads
    config["text_config"] = full
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def processor_template(tokenizer) -> str:
    """The tokenizer's chat template behind the content-parts wrapper (applied once)."""
    template = tokenizer.chat_template
    if template.startswith(TEMPLATE_MARK):
        return template
    content = "[{'type': 'text', 'text': text}]" if template_takes_parts(template) else "text"
    return _CONTENT_WRAPPER.replace("CONTENT", content) + template


# ---- import -------------------------------------------------------------------------------------

NATIVE_CLASSES = {"llava": LlavaForConditionalGeneration, "voxtral": VoxtralForConditionalGeneration}


def load_native(model, folder: str | Path) -> set[str]:
    """Copy a LLaVA / Voxtral folder's weights into the bridge's raw parts (built from the config
    `mmtune.model.native_config` filled from the same folder) -> the parts it loaded."""
    kind = native_type(folder)
    dtype = model.llm.dtype
    try:
        native = NATIVE_CLASSES[kind].from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model.init_from {folder}: cannot load its {kind} weights ({e})") from None
    _copy_llm_back(native, model.llm, folder)
    if kind == "llava":
        if model.vision_tower is None:
            raise CheckpointError(f"model.init_from {folder}: a LLaVA folder needs model.vision in the config")
        kept = len(_inner(model.vision_tower.model).encoder.layers)
        extra = tuple(f"encoder.layers.{i}." for i in range(kept, _inner(native.model.vision_tower).config
                                                            .num_hidden_layers))
        _copy(_inner(model.vision_tower.model), _inner(native.model.vision_tower), f"{folder}: the vision tower",
              skip=("post_layernorm.", "head.") + extra)
        proj = native.model.multi_modal_projector
        _copy(model.vision_projector, {**_prefixed(proj.linear_1, "mlp.0."), **_prefixed(proj.linear_2, "mlp.2.")},
              f"{folder}: the projector")
        return {"llm", "vision_tower", "vision_projector"}
    if model.audio_encoder is None:
        raise CheckpointError(f"model.init_from {folder}: a Voxtral folder needs model.audio in the config")
    _copy(model.audio_encoder.encoder, native.model.audio_tower, f"{folder}: the audio encoder")
    _copy(model.audio_projector, native.model.multi_modal_projector, f"{folder}: the projector")
    return {"llm", "audio_encoder", "audio_projector"}


def _copy_llm(llm, native) -> None:
    """The causal LLM into a native model: its base model into language_model, its head into lm_head."""
    _copy(native.model.language_model, getattr(llm, llm.base_model_prefix), "the LLM")
    _copy(native.lm_head, llm.get_output_embeddings(), "the LLM's output head")  # tied: the same values again


def _copy_llm_back(native, llm, folder) -> None:
    """A native model's language_model and lm_head into the bridge's LLM; a vocabulary that mmtune's
    tokenizer grew (its placeholder tokens) keeps the folder's rows and the mean row for the new ones."""
    base = getattr(llm, llm.base_model_prefix)
    state = native.model.language_model.state_dict()
    embed_key = next(n for n, m in base.named_modules() if m is base.get_input_embeddings()) + ".weight"
    state[embed_key] = _grown(state[embed_key], base.get_input_embeddings().weight)
    _copy(base, state, f"{folder}: the LLM")
    head = llm.get_output_embeddings()
    if head is not None and not llm.config.tie_word_embeddings:
        head_state = native.lm_head.state_dict()
        head_state["weight"] = _grown(head_state["weight"], head.weight)
        _copy(head, head_state, f"{folder}: the LLM's output head")


def _grown(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(V, D) -> (V', D) as `like` (V' >= V): the rows as they are, then their mean for the V' - V new tokens."""
    if rows.shape[0] >= like.shape[0]:
        return rows
    return torch.cat([rows, rows.mean(0, keepdim=True).expand(like.shape[0] - rows.shape[0], -1)])


def _copy(dst: nn.Module, src, what: str, skip: tuple[str, ...] = ()) -> None:
    """dst's tensors from `src` (a module or a state dict), same names and shapes; names starting with one of
    `skip` are left out on either side (parts the other model does not have)."""
    source = src.state_dict() if isinstance(src, nn.Module) else dict(src)
    source = {k: v for k, v in source.items() if not k.startswith(skip)}
    target = {k: v for k, v in dst.state_dict().items() if not k.startswith(skip)}
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    bad = [k for k in set(target) & set(source) if tuple(target[k].shape) != tuple(source[k].shape)]
    if missing or extra or bad:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                  f"{bad[0]} has shape {tuple(source[bad[0]].shape)}, not {tuple(target[bad[0]].shape)}")
        raise CheckpointError(f"{what} does not match ({detail}): the folder's config and weights disagree, or the "
                              f"model config differs from the folder's")
    dst.load_state_dict(source, strict=False)


def _inner(vision_model: nn.Module) -> nn.Module:
    """A CLIP / SigLIP vision model's transformer (older transformers nest it as .vision_model)."""
    return getattr(vision_model, "vision_model", vision_model)


def _prefixed(module: nn.Module, prefix: str) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}

