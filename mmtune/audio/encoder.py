"""The encoder half of a Whisper checkpoint, run on clips of any length up to 30 s.

Stock `WhisperEncoder.forward` insists on 3000 mel frames (30 s). This wrapper runs the same
modules on the real frames only: positional embeddings are sliced to the clip's length, and
every clip's output equals encoding that clip alone (a 30 s clip equals the stock encoder).

Two ways through the transformer layers, chosen by the encoder's attention implementation:
  padded (sdpa, eager): the batch stays (A, T, C); padded frames are masked out of attention.
  packed (mmtune's varlen kernel, flash_attention_2): the real frames of every clip are
      gathered into one row (1, sum T_i, C) with `cu_seqlens`, so no layer computes a padded
      frame and one varlen attention call covers all clips.
The convolutions always run on the padded batch (A, n_mels, F), with the padding frames zeroed
between them, so they never mix clips.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.model.placeholders import whisper_encoder_frames
from mmtune.model.varlen import NAME as VARLEN_NAME

PACKED_ATTENTION = (VARLEN_NAME, "flash_attention_2")  # implementations that take cu_seqlens


class AudioEncoder(nn.Module):
    def __init__(self, whisper_encoder: nn.Module):
        super().__init__()
        self.encoder = whisper_encoder  # transformers WhisperEncoder
        self.hidden_size = whisper_encoder.config.d_model
        self.n_mels = whisper_encoder.config.num_mel_bins

    @property
    def packed(self) -> bool:
        """Whether the layers run on one packed row with cu_seqlens (else: padded with a mask)."""
        return runs_packed(self.encoder)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (A, n_mels, F) zero-padded, lengths (A,) mel frames -> ((A, T, C), (A,) encoder frames)."""
        return encode_real_frames(self.encoder, features, lengths, self.training)


def encode_real_frames(enc: nn.Module, features: torch.Tensor, lengths: torch.Tensor,
                       training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A WhisperEncoder's modules on each clip's real frames (see the module docstring):
    features (A, n_mels, F), lengths (A,) -> ((A, T, C), (A,) encoder frames). Frames past a clip's
    length are zeros on the packed path and unspecified on the padded one."""
    max_frames = enc.config.max_source_positions * 2  # mel frames (3000 = 30 s)
    if features.shape[-1] > max_frames:
        raise ValueError(f"an audio clip has {features.shape[-1]} mel frames; the encoder takes at most "
                         f"{max_frames} ({max_frames // 100} s): cut long audio into shorter clips")
    features = features.to(enc.conv1.weight.dtype)
    lengths = lengths.to(features.device)
    frames = torch.arange(features.shape[-1], device=features.device)
    x = F.gelu(enc.conv1(features))  # (A, n_mels, F) -> (A, C, F)
    x = x * (frames[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)  # zero the padding frames
    x = F.gelu(enc.conv2(x))  # (A, C, F) -> (A, C, T), T = ceil(F / 2)
    x = x.transpose(1, 2)  # (A, C, T) -> (A, T, C)
    out_lengths = whisper_encoder_frames(lengths)  # (A,) encoder frames, computed on the device
    # through the module, not its .weight: DeepSpeed ZeRO-3 gathers a parameter when its module runs
    x = x + enc.embed_positions(torch.arange(x.shape[1], device=x.device))  # (T, C)
    x = F.dropout(x, p=enc.dropout, training=training)
    if runs_packed(enc):
        return _packed_layers(enc, x, out_lengths), out_lengths
    mask = padding_mask(out_lengths, x.shape[1], x.dtype)
    for layer in enc.layers:
        x = layer(x, mask)
    return enc.layer_norm(x), out_lengths


def runs_packed(enc: nn.Module) -> bool:
    """Whether the encoder's attention takes cu_seqlens, so its layers run on one packed row of real frames."""
    return enc.config._attn_implementation in PACKED_ATTENTION


def _packed_layers(enc: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(A, T, C) padded, (A,) real frames -> (A, T, C): the layers run on the real frames only."""
    keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (A, T)
    row = x[keep][None]  # (A, T, C) -> (1, sum T_i, C), clip after clip
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))  # (A + 1,)
    longest = int(lengths.max())
    kwargs = dict(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest, max_length_k=longest)
    for layer in enc.layers:
        row = layer(row, None, **kwargs)  # kwargs reach the attention function through WhisperAttention
    row = enc.layer_norm(row)
    return x.new_zeros(x.shape).masked_scatter(keep.unsqueeze(-1), row)  # (1, sum T_i, C) -> (A, T, C)


def padding_mask(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bidirectional mask (A, 1, T, T) hiding keys past each clip's length; None if no padding."""
    if bool((lengths == total).all()):
        return None
    keep = torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]  # (A, T)
    mask = torch.zeros(keep.shape, dtype=dtype, device=lengths.device)
    mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
    return mask[:, None, None, :].expand(-1, 1, total, total)
