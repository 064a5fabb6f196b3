"""The encoder half of a Whisper checkpoint, run on clips of any length up to 30 s.

Stock `WhisperEncoder.forward` insists on 3000 mel frames (30 s). This wrapper runs the same
modules on the real frames only: positional embeddings are sliced to the clip's length, and
in a batch the padded frames are zeroed between the convolutions and masked out of attention,
so every clip's output equals encoding that clip alone (a 30 s clip equals the stock encoder).
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.model.placeholders import whisper_encoder_frames


class AudioEncoder(nn.Module):
    def __init__(self, whisper_encoder: nn.Module):
        super().__init__()
        self.encoder = whisper_encoder  # transformers WhisperEncoder
        self.hidden_size = whisper_encoder.config.d_model
        self.n_mels = whisper_encoder.config.num_mel_bins
        self.max_frames = whisper_encoder.config.max_source_positions * 2  # mel frames (3000 = 30 s)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (A, n_mels, F) zero-padded, lengths (A,) mel frames -> ((A, T, C), (A,) encoder frames)."""
        enc = self.encoder
        if features.shape[-1] > self.max_frames:
            raise ValueError(f"an audio clip has {features.shape[-1]} mel frames; the encoder takes at most "
                             f"{self.max_frames} ({self.max_frames // 100} s): cut long audio into shorter clips")
        features = features.to(enc.conv1.weight.dtype)
        frames = torch.arange(features.shape[-1], device=features.device)
        x = F.gelu(enc.conv1(features))  # (A, n_mels, F) -> (A, C, F)
        x = x * (frames[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)  # zero the padding frames
        x = F.gelu(enc.conv2(x))  # (A, C, F) -> (A, C, T), T = ceil(F / 2)
        x = x.transpose(1, 2)  # (A, C, T) -> (A, T, C)
        out_lengths = torch.tensor([whisper_encoder_frames(int(n)) for n in lengths], device=x.device)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        mask = padding_mask(out_lengths, x.shape[1], x.dtype)
        for layer in enc.layers:
            x = layer(x, mask)
        return enc.layer_norm(x), out_lengths


def padding_mask(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bidirectional mask (A, 1, T, T) hiding keys past each clip's length; None if no padding."""
    if bool((lengths == total).all()):
        return None
    keep = torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]  # (A, T)
    mask = torch.zeros(keep.shape, dtype=dtype, device=lengths.device)
    mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
    return mask[:, None, None, :].expand(-1, 1, total, total)
