"""Whisper-compatible log-mel spectrogram on torch: batched, any device, any clip length.

Same numbers as transformers' `WhisperFeatureExtractor` (Slaney mel filters from librosa,
periodic Hann window, power spectrum, log10 clamped at 1e-10, floor at max - 8, then
(x + 4) / 4), without padding every clip to 30 s. A clip of n samples gives n // 160 frames.

Frame t is centred on sample t * 160. Like the extractor, the clip is reflected at its
start; past its end it reads zeros (the extractor reads the zeros of its 30 s padding).
So for every clip shorter than 30 s, all n // 160 frames equal the extractor's first
n // 160 frames. Only for clips of 30 s or more does the last frame differ: the extractor
cuts at 30 s and reflects there, where we read zeros. The max - 8 floor is taken per clip
over its own n // 160 frames (the extractor's max also sees the 1 to 3 frames that straddle
the clip's end, which matters only when one of those holds the clip's loudest bin).
"""

import functools

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from mmtune.audio.io import SAMPLE_RATE

N_FFT = 400  # samples (25 ms at 16 kHz)
HOP_LENGTH = 160  # samples (10 ms)
N_FREQS = N_FFT // 2 + 1  # 201 STFT bins, 0 .. 8 kHz
LOG_FLOOR = 1e-10  # mel power clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below each clip's max (80 dB)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
CHUNK_SECONDS = 30  # s, the longest clip a Whisper encoder takes
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a 30 s chunk
MAX_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s chunk


def num_frames(n_samples: int) -> int:
    """Mel frames for a clip of n samples at 16 kHz: one per full 10 ms hop (n // 160)."""
    return int(n_samples) // HOP_LENGTH


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int, device: str = "cpu") -> torch.Tensor:
    """Slaney mel filterbank, shape (n_mels, 201) float32, cached per (n_mels, device); read-only."""
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, dtype=np.float64)
    return torch.from_numpy(fb).to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=None)
def hann_window(device: str = "cpu") -> torch.Tensor:
    """Periodic Hann window, shape (400,), cached per device."""
    return torch.hann_window(N_FFT, device=device)


def log_mel_spectrogram(waveform, n_mels: int = 80, lengths=None, device=None) -> torch.Tensor:
    """Whisper log-mel features of one clip or a zero-padded batch.

    waveform: (n,) or (B, n) samples at 16 kHz, np.ndarray or torch.Tensor.
    lengths: (B,) real samples per row (default: all n); samples past them are ignored.
    device: where to compute (default: the tensor's own device, or CPU for numpy).
    Returns float32 (n_mels, n // 160) for one clip, or (B, n_mels, n // 160) for a batch,
    where frames at or past a row's lengths[b] // 160 are 0.
    """
    single = np.ndim(waveform) == 1
    x, lengths = _as_batch(waveform, lengths, device)  # (B, n), (B,)
    if x.device.type == "cpu":
        features = _clip_by_clip(x, lengths, n_mels)
    else:
        features = _whole_batch(x, lengths, n_mels)
    return features[0] if single else features  # (n_mels, T) or (B, n_mels, T)


def windowed_log_mel(waveform, n_mels: int = 80, window: int = MAX_FRAMES) -> torch.Tensor:
    """Log-mel of one clip (n,) cut into windows of `window` frames, each computed as a clip of its own
    (its own start reflection and max - 8 floor, as Whisper sees a 30 s segment), joined along time:
    (n_mels, n // 160). A clip no longer than one window gives exactly `log_mel_spectrogram`'s features."""
    step = window * HOP_LENGTH  # samples per window
    if len(waveform) <= step:
        return log_mel_spectrogram(waveform, n_mels)
    parts = [log_mel_spectrogram(waveform[a : a + step], n_mels) for a in range(0, len(waveform), step)]
    return torch.cat(parts, dim=-1)  # (n_mels, sum of n_i // 160) = (n_mels, n // 160): windows are whole hops


def padded_log_mel(waveform, n_mels: int = 80, frames: int = MAX_FRAMES) -> torch.Tensor:
    """Log-mel of one clip (n,) zero-padded to `frames` x 160 samples first, as WhisperFeatureExtractor pads
    every clip to its 30 s chunk: (n_mels, frames), the same numbers as the extractor's (a window of
    chunk_length = frames / 100 s). The clip must fit: n <= frames x 160."""
    total = frames * HOP_LENGTH
    if len(waveform) > total:
        raise ValueError(f"a clip of {len(waveform)} samples does not fit a window of {frames} frames ({total} samples)")
    return log_mel_spectrogram(np.pad(np.asarray(waveform, dtype=np.float32), (0, total - len(waveform))), n_mels)


def _as_batch(waveform, lengths, device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 samples (B, n) on `device` and lengths (B,) int64, checked against n."""
    x = torch.as_tensor(waveform).to(device=device, dtype=torch.float32)
    if x.dim() == 1:
        x = x[None]  # (1, n)
    if x.dim() != 2:
        raise ValueError(f"waveform must be (n,) or (B, n) samples, got shape {tuple(x.shape)}")
    batch, width = x.shape
    if lengths is None:
        return x, torch.full((batch,), width, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).cpu()
    if lengths.shape[0] != batch or bool((lengths < 0).any()) or bool((lengths > width).any()):
        raise ValueError(f"lengths must be {batch} values in [0, {width}], got {lengths.tolist()}")
    return x, lengths


def _clip_by_clip(x: torch.Tensor, lengths: torch.Tensor, n_mels: int) -> torch.Tensor:
    """CPU: each clip over its own samples. Clip-sized tensors stay in cache: 5-15x faster on a
    2-core CPU than one STFT over the padded batch (which also spends work on the padding)."""
    out = x.new_zeros(x.shape[0], n_mels, num_frames(x.shape[1]))  # (B, n_mels, T)
    for b, n in enumerate(lengths.tolist()):
        t = num_frames(n)
        if t > 0:
            out[b, :, :t] = _log_mel(x[b : b + 1, :n], n_mels, torch.tensor([t]))[0]
    return out


def _whole_batch(x: torch.Tensor, lengths: torch.Tensor, n_mels: int) -> torch.Tensor:
    """GPU: one STFT over the padded batch (B, n), samples past each length zeroed first."""
    lengths = lengths.to(x.device)
    x = x * (torch.arange(x.shape[1], device=x.device) < lengths[:, None])  # (B, n)
    return _log_mel(x, n_mels, lengths // HOP_LENGTH)


def _log_mel(x: torch.Tensor, n_mels: int, frames: torch.Tensor) -> torch.Tensor:
    """(B, n) samples -> (B, n_mels, n // 160) features, zero at or past each row's `frames`."""
    power = _power_spectrogram(x)  # (B, 201, T)
    mel = mel_filters(n_mels, str(x.device)) @ power  # (n_mels, 201) @ (B, 201, T) -> (B, n_mels, T)
    return _normalize(torch.clamp(mel, min=LOG_FLOOR).log10(), frames)


def _power_spectrogram(x: torch.Tensor) -> torch.Tensor:
    """|STFT|^2 of (B, n) samples -> (B, 201, n // 160): reflect at the start, zeros at the end."""
    frames = num_frames(x.shape[-1])
    if frames == 0:
        return x.new_zeros(x.shape[0], N_FREQS, 0)
    half = N_FFT // 2  # 200 samples: frame t is centred on sample t * 160
    x = F.pad(x, (0, half))  # zeros after the clip, (B, n + 200)
    x = F.pad(x[:, None], (half, 0), mode="reflect")[:, 0]  # (B, n + 400)
    x = x[:, : (frames - 1) * HOP_LENGTH + N_FFT]  # exactly `frames` windows
    stft = torch.stft(
        x, N_FFT, HOP_LENGTH, window=hann_window(str(x.device)), center=False, return_complex=True
    )  # (B, 201, frames)
    return stft.abs() ** 2


def _normalize(log_spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Floor each clip at its max - 8 over its real frames, scale by (x + 4) / 4, zero the rest."""
    if log_spec.shape[-1] == 0:
        return log_spec
    real = torch.arange(log_spec.shape[-1], device=log_spec.device) < frames[:, None]  # (B, T)
    real = real[:, None, :]  # (B, 1, T)
    peak = log_spec.masked_fill(~real, -torch.inf).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).masked_fill(~real, 0.0)
