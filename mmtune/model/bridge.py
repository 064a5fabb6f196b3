"""`MultimodalLM`: encoders -> projectors -> scattered into the LLM's input embeddings.

Parts are composed in the constructor (see `mmtune.model.build` for building them from a
config). The forward pass takes a collated batch (`mmtune.data.example` lists its keys):

    audio_features (A, n_mels, F) -> windows of <= audio_window frames (A', n_mels, W) -> AudioEncoder
                                  -> (A', T_enc, C_a) -> projector -> (A', T_tok, D) -> each clip's windows joined
    pixel_values   (I, 3, H, W)   -> VisionTower  -> (I, N, C_v)     -> projector -> (I, N, D), I views
    input_ids      (B, T)         -> embeddings (B, T, D); rows at placeholder ids are replaced,
                                     in order, by the projected media tokens
    -> LLM (use_cache=False): without labels, logits (B, T, V); with labels, the summed cross
       entropy over supervised tokens only, in chunks (`mmtune.model.loss`), and no logits
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.audio.features import MAX_FRAMES
from mmtune.errors import DataError
from mmtune.model.loss import CHUNK_ELEMENTS, chunked_loss, head_is_plain, supervised_targets
from mmtune.model.placeholders import audio_windows, num_audio_tokens


@dataclass
class MultimodalOutput:
    logits: torch.Tensor | None = None  # (B, T, V), when called without labels
    loss: torch.Tensor | None = None  # loss_sum / num_tokens
    loss_sum: torch.Tensor | None = None  # summed token cross entropy
    num_tokens: int = 0  # supervised tokens in the batch
    idle: tuple = ()  # under several processes: modalities whose trained parts only ran on a dummy input


class MultimodalLM(nn.Module):
    def __init__(self, llm: nn.Module, token_ids: dict[str, int], audio_encoder: nn.Module | None = None,
                 audio_projector: nn.Module | None = None, vision_tower: nn.Module | None = None,
                 vision_projector: nn.Module | None = None, audio_stack: int = 1, audio_window: int = MAX_FRAMES,
                 loss_chunk_elements: int = CHUNK_ELEMENTS, whole_parts: set[str] | None = None,
                 attn_kwargs_for_packing: bool = False):
        super().__init__()
        self.llm = llm
        self.audio_encoder = audio_encoder
        self.audio_projector = audio_projector
        self.vision_tower = vision_tower
        self.vision_projector = vision_projector
        self.audio_stack = audio_stack
        self.audio_window = audio_window  # mel frames per encoder window: longer clips are cut into windows
        self.token_ids = dict(token_ids)  # {"audio": id, "image": id}
        self.attn_kwargs_for_packing = attn_kwargs_for_packing  # hand cu_seqlens to varlen kernels
        # parts saved whole in checkpoints: built from a config, or loaded from a previous stage
        self.whole_parts = set(whole_parts) if whole_parts is not None else {"audio_projector", "vision_projector"}
        self.chunked_loss = head_is_plain(llm)  # else the LLM computes logits at supervised positions itself
        self.loss_chunk_elements = loss_chunk_elements  # logits (positions x vocabulary) per loss chunk

    def enable_activation_checkpointing(self) -> None:
        """Recompute the layers of the LLM and of every tower that trains in the backward pass, instead
        of keeping their activations (a frozen tower keeps none: nothing flows back through it)."""
        kwargs = {"use_reentrant": False}
        self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        towers = (self.audio_encoder and self.audio_encoder.encoder, self.vision_tower and self.vision_tower.model)
        for tower in towers:
            if tower is not None and any(p.requires_grad for p in tower.parameters()):
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    # ---- media -> embeddings -------------------------------------------------------------------

    def audio_tokens(self, features: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """(A, n_mels, F), (A,) -> one (n_tokens_i, D) tensor per clip: its windows' tokens, in order."""
        windows, window_lengths, per_clip = split_windows(features, lengths, self.audio_window)  # (A', n_mels, W)
        hidden, enc_lengths = self.audio_encoder(windows, window_lengths)  # (A', T, C)
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < enc_lengths[:, None]
        hidden = hidden * keep.unsqueeze(-1).to(hidden.dtype)  # padding frames never leak into a stacked token
        tokens = self.audio_projector(hidden)  # (A', T, C) -> (A', T_tok, D)
        counts = [num_audio_tokens(int(n), self.audio_stack, self.audio_window) for n in window_lengths]
        pieces = [tokens[i, :n] for i, n in enumerate(counts)]  # one (n_tokens, D) per window
        clips, start = [], 0
        for k in per_clip:
            clips.append(torch.cat(pieces[start : start + k]) if k > 1 else pieces[start])
            start += k
        return clips

    def image_tokens(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(I, 3, H, W) -> one (N, D) tensor per view (an image, or one of its tiles or its overview)."""
        tokens = self.vision_projector(self.vision_tower(pixel_values))  # (I, N, C) -> (I, N, D)
        return list(tokens.unbind(0))

    def embed(self, input_ids: torch.Tensor, sources: list[str] | None = None, audio_features=None,
              audio_lengths=None, audio_owner=None, pixel_values=None, image_owner=None,
              sample_index: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> inputs_embeds (B, T, D) with media tokens at the placeholder positions.

        `sample_index` (B, T) says which sample of the batch each position belongs to (rows for
        padded batches, segments for packed ones); it names the sample on a count mismatch.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, D)
        media = {}
        if audio_features is not None:
            self._require("audio", self.audio_encoder)
            media["audio"] = (self.audio_tokens(audio_features, audio_lengths), audio_owner)
        if pixel_values is not None:
            self._require("image", self.vision_tower)
            media["image"] = (self.image_tokens(pixel_values), image_owner)
        for modality, token_id in self.token_ids.items():
            tokens, owner = media.get(modality, ([], None))
            embeds = self._scatter(embeds, input_ids == token_id, tokens, owner, modality, sources, sample_index)
        return embeds

    def idle_parts(self, audio: bool, image: bool) -> tuple[str, ...]:
        """The modalities ("audio", "image") whose trained tower or projector a batch without them leaves idle."""
        idle = []
        if not audio and self.audio_encoder is not None and _trains(self.audio_encoder, self.audio_projector):
            idle.append("audio")
        if not image and self.vision_tower is not None and _trains(self.vision_tower, self.vision_projector):
            idle.append("image")
        return tuple(idle)

    def _anchor(self, idle: tuple[str, ...], embeds: torch.Tensor) -> torch.Tensor:
        """0 x the output of each idle modality's tower and projector on a minimal dummy input (a zero clip
        of one stacked token, a zero image): under DDP every process's step then uses every trained
        parameter, whether its micro-batch has audio and images or not. Adds exactly 0."""
        anchor = embeds.new_zeros(())
        if "audio" in idle:
            frames = 2 * self.audio_stack  # the encoder halves the frames: one stacked token
            features = embeds.new_zeros((1, self.audio_encoder.encoder.config.num_mel_bins, frames))
            lengths = torch.tensor([frames], device=embeds.device)
            anchor = anchor + 0.0 * sum(t.sum() for t in self.audio_tokens(features, lengths))
        if "image" in idle:
            size = self.vision_tower.image_size
            anchor = anchor + 0.0 * sum(t.sum() for t in self.image_tokens(embeds.new_zeros((1, 3, size, size))))
        return anchor.to(embeds.dtype)

    def _require(self, modality: str, part: nn.Module | None) -> None:
        if part is None:
            raise ValueError(f"the batch has {modality} inputs but the model has no {modality} tower: "
                             f"add model.{'vision' if modality == 'image' else 'audio'} to the config")

    def _scatter(self, embeds, is_slot, tokens, owner, modality, sources, sample_index):
        """Write each media tensor's tokens into its placeholder slots, checking counts per sample."""
        if sample_index is None:
            sample_index = torch.arange(embeds.shape[0], device=embeds.device)[:, None].expand_as(is_slot)
        n = max(len(sources or []), int(sample_index.max()) + 1, int(owner.max()) + 1 if tokens else 0)
        slots = torch.bincount(sample_index[is_slot], minlength=n)  # (n,) placeholder tokens per sample
        made = torch.zeros_like(slots)  # (n,) media tokens per sample
        for i, t in enumerate(tokens):
            made[int(owner[i])] += t.shape[0]
        if not torch.equal(slots, made):
            bad = int((slots != made).nonzero()[0])
            where = sources[bad] if sources and bad < len(sources) else f"sample {bad} of the batch"
            raise DataError(where, f"{modality} placeholder mismatch: the text has {int(slots[bad])} "
                                   f"{modality} placeholder tokens but its {modality} inputs give {int(made[bad])} "
                                   f"tokens; encode samples with mmtune.data.encode so counts match the encoder")
        if not tokens:
            return embeds
        flat = torch.cat(tokens).to(embeds.dtype)  # (sum n_i, D), in order of appearance
        return embeds.masked_scatter(is_slot.unsqueeze(-1), flat)

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, input_ids, labels=None, attention_mask=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, sources=None, **media) -> MultimodalOutput:
        sample_index = _segment_index(cu_seqlens, input_ids.shape[1]) if cu_seqlens is not None else None
        embeds = self.embed(input_ids, sources, sample_index=sample_index, **media)
        idle = ()
        if self.training and torch.is_grad_enabled() and _several_processes():
            idle = self.idle_parts(media.get("audio_features") is not None, media.get("pixel_values") is not None)
            embeds = embeds + self._anchor(idle, embeds)
        kwargs = {}
        if cu_seqlens is not None and self.attn_kwargs_for_packing:
            kwargs = dict(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                          max_length_q=int(max_seqlen), max_length_k=int(max_seqlen))
        if labels is None:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, **kwargs)
            return MultimodalOutput(logits=out.logits)  # (B, T, V)
        keep, targets = supervised_targets(labels)  # (B, T) bool, (N,)
        if targets.numel() == 0:
            names = ", ".join(sources or []) or "this batch"
            raise DataError(names, "no supervised token in the batch (every label is masked): "
                                   "check that each sample has an assistant answer and is not truncated away")
        loss_sum = self._loss_sum(embeds, keep, targets, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False, **kwargs)
        num_tokens = targets.numel()
        return MultimodalOutput(loss=loss_sum / num_tokens, loss_sum=loss_sum, num_tokens=num_tokens, idle=idle)

    def _loss_sum(self, embeds, keep, targets, **llm_kwargs) -> torch.Tensor:
        """Summed cross entropy of the positions `keep` (B, T) against targets (N,), no (B, T, V) logits."""
        if self.chunked_loss:
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, **llm_kwargs).last_hidden_state  # (B, T, D)
            return chunked_loss(hidden[keep], targets, self.llm.get_output_embeddings(),
                                self.loss_chunk_elements)  # (N, D) -> ()
        logits = self.llm(inputs_embeds=embeds, logits_to_keep=keep, **llm_kwargs).logits  # (N, V)
        return F.cross_entropy(logits.float(), targets, reduction="sum")

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, sources=None, **kwargs) -> torch.Tensor:
        """Left-padded prompts (B, T) -> new token ids (B, T_new); kwargs: media keys + HF generate options."""
        media = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith(("audio_", "pixel_", "image_"))}
        embeds = self.embed(input_ids, sources, **media)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


def split_windows(features: torch.Tensor, lengths: torch.Tensor, window: int):
    """Clips (A, n_mels, F) with lengths (A,) -> their windows of at most `window` frames
    (A', n_mels, min(F, window)), each window's frames (A',), and how many windows each clip has [A].
    A batch of clips no longer than a window comes back as it is."""
    if features.shape[-1] <= window:
        return features, lengths, [1] * len(lengths)
    frames = [audio_windows(int(n), window) for n in lengths.tolist()]  # per clip, per window
    width = max(max(f) for f in frames)
    out = features.new_zeros(sum(len(f) for f in frames), features.shape[1], width)  # (A', n_mels, W)
    k = 0
    for clip, windows in enumerate(frames):
        for j, n in enumerate(windows):
            out[k, :, :n] = features[clip, :, j * window : j * window + n]
            k += 1
    return out, torch.tensor([n for f in frames for n in f], dtype=lengths.dtype), [len(f) for f in frames]


def _segment_index(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """cu_seqlens (N+1,) -> (1, T) index of the packed sample each position belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    index = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    return F.pad(index, (0, total - index.shape[0]), value=len(lengths) - 1)[None, :]


def _several_processes() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def _trains(*parts: nn.Module | None) -> bool:
    return any(p.requires_grad for part in parts if part is not None for p in part.parameters())
