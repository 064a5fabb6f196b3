"""Training-only audio augmentation: on the waveform, Kaldi speed perturbation, white noise, room
reverberation, band limiting (telephone audio), gain (a louder or quieter microphone); on the
log-mel features, SpecAugment masks, vocal tract length perturbation (another speaker) and a
random channel response (another microphone).

Every random draw comes from the generator passed in, so a seed fixes the output.
Never apply these at evaluation time.
"""

import functools

import librosa
import numpy as np
import torch

from mmtune.audio.io import SAMPLE_RATE, resample


def spec_augment(
    features: torch.Tensor,
    num_masks: int = 2,
    freq_mask: int = 15,
    time_mask: int = 50,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on one clip's log-mel features, shape (n_mels, T).

    Draws `num_masks` frequency bands of width U{0..freq_mask} mel bins and `num_masks`
    time spans of width U{0..time_mask} frames (each capped at the axis size), at uniform
    positions. Masked values are set to the clip's own mean (taken before masking), not 0:
    Whisper features are not zero-mean, so 0 would be an out-of-range value the encoder never
    sees. Returns a new tensor (n_mels, T); `features` is not modified.
    `generator` is a CPU torch.Generator (default: torch's global RNG).
    """
    if features.dim() != 2:
        raise ValueError(f"spec_augment takes one clip's (n_mels, T) features, got {tuple(features.shape)}")
    out = features.clone()  # (n_mels, T)
    if out.numel() == 0:
        return out
    fill = features.mean()
    n_mels, frames = out.shape
    for _ in range(num_masks):
        start, width = _draw_span(n_mels, freq_mask, generator)
        out[start : start + width, :] = fill
        start, width = _draw_span(frames, time_mask, generator)
        out[:, start : start + width] = fill
    return out


def _draw_span(size: int, max_width: int, generator: torch.Generator | None) -> tuple[int, int]:
    """(start, width) with width ~ U{0..min(max_width, size)} and start ~ U{0..size - width}."""
    width = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=generator))
    start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
    return start, width


def speed_perturb(waveform: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation of (n,) samples: play `factor` times faster.

    The clip is resampled as if recorded at 16 kHz * factor, so duration scales by 1 / factor
    and pitch by factor (0.9 = slower and lower). Returns float32 (ceil(n / factor),).
    Usual factors: 0.9, 1.0, 1.1.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    return resample(np.asarray(waveform, dtype=np.float32), SAMPLE_RATE * factor, SAMPLE_RATE)


def add_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at exactly `snr_db` dB: 10 log10(mean(x^2) / mean(noise^2)).

    The drawn noise is rescaled by its own power, so the SNR is exact, not just expected.
    Returns float32 (n,). A silent clip (zero power) has no SNR and is returned unchanged.
    """
    x = np.asarray(waveform, dtype=np.float64)  # (n,)
    signal_power = np.mean(x**2) if x.size else 0.0
    if signal_power == 0.0:
        return np.array(waveform, dtype=np.float32)
    noise = rng.standard_normal(x.shape)  # (n,)
    scale = np.sqrt(signal_power / (np.mean(noise**2) * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise).astype(np.float32)


REVERB_DRR_DB = (0.0, 10.0)  # direct-to-reverberant energy ratio drawn per clip, dB (near to far talker)
REVERB_MAX_S = 1.0  # longest synthetic impulse response, s


def reverberate(waveform: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve (n,) samples with a synthetic room impulse response of reverberation time `rt60` s.

    The response is a direct impulse plus a diffuse tail of Gaussian noise decaying 60 dB in `rt60`
    seconds (Polack's model; at most REVERB_MAX_S long), whose energy sits a drawn
    U(REVERB_DRR_DB) dB below the direct sound. The output keeps the input's length (the tail
    past the clip's end is cut, so measured lengths hold) and its peak. Returns float32 (n,).
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be > 0 s, got {rt60}")
    x = np.asarray(waveform, dtype=np.float64)  # (n,)
    peak = np.abs(x).max() if x.size else 0.0
    if peak == 0.0:
        return np.array(waveform, dtype=np.float32)
    t = np.arange(1, int(min(rt60, REVERB_MAX_S) * SAMPLE_RATE)) / SAMPLE_RATE  # (m - 1,) s after the direct sound
    tail = rng.standard_normal(t.size) * np.exp(-6.9078 * t / rt60)  # ln(1000): 60 dB of amplitude decay
    drr_db = rng.uniform(*REVERB_DRR_DB)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(np.sum(tail**2), 1e-12))
    response = np.concatenate([[1.0], tail])  # (m,)
    size = 1 << (x.size + response.size - 2).bit_length()  # >= n + m - 1: a linear convolution; a power of 2: fast
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(response, size), size)[: x.size]  # (n,)
    return (wet * (peak / max(np.abs(wet).max(), 1e-12))).astype(np.float32)


def band_limit(waveform: np.ndarray, rate: float) -> np.ndarray:
    """(n,) samples at 16 kHz passed through `rate` Hz and back, as audio recorded or sent at that
    rate sounds (8000: telephone, nothing above 4 kHz). Returns float32 (n,)."""
    if not 0 < rate < SAMPLE_RATE:
        raise ValueError(f"band-limit rate must be in (0, {SAMPLE_RATE}) Hz, got {rate}")
    x = np.asarray(waveform, dtype=np.float32)
    out = resample(resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE)[: x.size]
    return np.pad(out, (0, x.size - out.size))


def gain(waveform: np.ndarray, db: float) -> np.ndarray:
    """The clip `db` dB louder (negative: quieter), unclipped: a microphone's level or a talker's distance.
    Whisper's log-mel moves by db / 40 where the clip is above its own floor. Returns float32 (n,)."""
    return np.asarray(waveform, dtype=np.float32) * np.float32(10.0 ** (db / 20.0))


VTLP_BOUNDARY_HZ = 4800.0  # Jaitly & Hinton (2013): the warp is linear up to here, then bends to keep 8 kHz at 8 kHz


@functools.lru_cache(maxsize=None)
def _mel_centres(n_mels: int) -> np.ndarray:
    """Centre frequencies (Hz) of the Slaney mel filters `log_mel_spectrogram` uses: (n_mels,)."""
    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=SAMPLE_RATE / 2)[1:-1]


def vtlp(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton 2013) of one clip's log-mel features (n_mels, T):
    the spectrum's frequencies are scaled by `alpha` (1.1: formants 10% higher, a shorter vocal tract)
    while the clip's duration and timing are kept, so a speaker sounds like another speaker.

    The warp is f -> alpha f below VTLP_BOUNDARY_HZ * min(alpha, 1) / alpha, then linear to 8 kHz -> 8 kHz.
    Output bin k takes the input's value at the frequency that warps onto its centre, interpolated
    between neighbouring bins on the mel scale. Returns a new float32 tensor (n_mels, T). Usual
    range: alpha in [0.9, 1.1].
    """
    if features.dim() != 2:
        raise ValueError(f"vtlp takes one clip's (n_mels, T) features, got {tuple(features.shape)}")
    if alpha <= 0:
        raise ValueError(f"vtlp alpha must be > 0, got {alpha}")
    n_mels = features.shape[0]
    centres = _mel_centres(n_mels)  # (n_mels,) Hz
    nyquist = SAMPLE_RATE / 2
    bend = VTLP_BOUNDARY_HZ * min(alpha, 1.0) / alpha  # Hz where the warp stops being f -> alpha f
    # The inverse warp: the input frequency that lands on each output centre.
    top = alpha * bend  # the warped frequency of the bend
    source = np.where(centres <= top, centres / alpha,
                      bend + (centres - top) * (nyquist - bend) / (nyquist - top))  # (n_mels,) Hz
    mel = librosa.hz_to_mel(centres)
    position = np.interp(librosa.hz_to_mel(source), mel, np.arange(n_mels, dtype=np.float64))  # (n_mels,) bins
    low = np.floor(position).astype(np.int64).clip(0, n_mels - 1)
    high = (low + 1).clip(0, n_mels - 1)
    frac = torch.from_numpy(position - low).to(features.dtype)[:, None]  # (n_mels, 1)
    return features[low] * (1 - frac) + features[high] * frac  # (n_mels, T)


def channel_eq(features: torch.Tensor, max_db: float, rng: np.random.Generator) -> torch.Tensor:
    """A random microphone or channel frequency response on one clip's log-mel features (n_mels, T):
    a smooth gain curve over frequency (the sum of the first four cosines across the mel axis, each
    with a random amplitude) scaled so its largest gain is a drawn U(0, max_db) dB, applied to every
    frame. The features are Whisper's (log10 power + 4) / 4, so g dB adds g / 40. Returns a new tensor."""
    if features.dim() != 2:
        raise ValueError(f"channel_eq takes one clip's (n_mels, T) features, got {tuple(features.shape)}")
    axis = np.linspace(0.0, np.pi, features.shape[0])  # (n_mels,)
    curve = rng.standard_normal(4) @ np.cos(np.arange(1, 5)[:, None] * axis)  # (4,) @ (4, n_mels) -> (n_mels,)
    curve *= rng.uniform(0.0, max_db) / max(np.abs(curve).max(), 1e-12)  # (n_mels,) dB
    return features + torch.from_numpy(curve / 40.0).to(features.dtype)[:, None]  # (n_mels, T)
