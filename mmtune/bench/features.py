"""Benchmark: our torch log-mel against transformers' WhisperFeatureExtractor on the same clips.

The extractor is called as a user calls it: one call on the list of clips, each padded to
its default 30 s, on CPU. Ours takes the clips padded only to the longest one, with their
lengths, on `device`. Most of the speedup is honest skipped work: no 30 s padding.
Both timings include padding the clips into a batch; each is the best of `repeats` runs
after one warm-up run. `max_abs_diff` is over every frame both compute (see `shared_frames`).

`threads` sets torch's intra-op threads for both paths during the run (restored after).
The default, 1, is how features are computed in DataLoader workers (torch gives each worker
one thread). On a shared, loaded CPU, torch's thread pool stalls on each small per-clip op;
pass threads=None to keep torch's own setting.
"""

import time

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from mmtune.audio.features import MAX_FRAMES, log_mel_spectrogram, num_frames
from mmtune.audio.io import SAMPLE_RATE
from mmtune.bench.report import check_device

MEDIAN_SECONDS = 4.0  # s, median duration of the log-normal clip mix
LOG_SIGMA = 0.7  # spread of log(duration), natural log units


def run(num_clips=64, seconds=(1, 20), seed=0, device="cpu", n_mels=80, repeats=3, threads=1) -> dict:
    """Time both feature paths on `num_clips` speech-like clips; returns figures as a dict."""
    check_device(device)
    clips = make_clips(num_clips, seconds, seed)
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        ours_s, ours = _best_time(lambda: _ours(clips, n_mels, device), repeats, device)
        theirs_s, theirs = _best_time(lambda: _theirs(extractor, clips), repeats, "cpu")
    finally:
        torch.set_num_threads(saved_threads)
    return {
        "speedup": theirs_s / ours_s,
        "max_abs_diff": max_abs_diff(ours.cpu().numpy(), theirs, [c.size for c in clips]),
        "ours_clips_per_s": num_clips / ours_s,
        "extractor_clips_per_s": num_clips / theirs_s,
        "num_clips": num_clips,
        "device": str(device),
        "n_mels": n_mels,
        "audio_seconds": sum(c.size for c in clips) / SAMPLE_RATE,
        "torch_threads": threads or saved_threads,
    }


def make_clips(num_clips: int, seconds=(1, 20), seed: int = 0) -> list[np.ndarray]:
    """Clips with log-normal durations (median 4 s) clamped to `seconds`, each (n,) float32."""
    rng = np.random.default_rng(seed)
    return [speech_like(int(d * SAMPLE_RATE), rng) for d in clip_durations(num_clips, seconds, rng)]


def clip_durations(num_clips: int, seconds, rng: np.random.Generator) -> np.ndarray:
    """(num_clips,) durations in s: log-normal around 4 s, clamped to [seconds[0], seconds[1]]."""
    return np.clip(rng.lognormal(np.log(MEDIAN_SECONDS), LOG_SIGMA, num_clips), *seconds)


def speech_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32: a gliding voiced tone (20 harmonics) under a syllable-rate envelope, plus noise."""
    t = np.arange(n) / SAMPLE_RATE  # s
    f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))  # Hz
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 21))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t), 0, None) ** 2  # syllables, pauses
    noise = rng.uniform(0.001, 0.01) * rng.standard_normal(n)
    return (rng.uniform(0.05, 0.3) * envelope * voice + noise).astype(np.float32)


def shared_frames(n_samples: int) -> int:
    """Frames both paths compute for a clip: ours has n // 160; the extractor's 30 s cut changes
    its frame 2999 (it reflects there, we read zeros past the clip), so at most 2999."""
    return min(num_frames(n_samples), MAX_FRAMES - 1)  # the extractor returns MAX_FRAMES per clip


def max_abs_diff(ours: np.ndarray, theirs: np.ndarray, lengths: list[int]) -> float:
    """Largest |ours - theirs| over each clip's shared frames; ours (B, n_mels, T), theirs (B, n_mels, 3000)."""
    diffs = [
        np.abs(ours[b, :, : shared_frames(n)] - theirs[b, :, : shared_frames(n)]).max(initial=0.0)
        for b, n in enumerate(lengths)
    ]
    return float(max(diffs))


def _ours(clips: list[np.ndarray], n_mels: int, device) -> torch.Tensor:
    """Pad to the longest clip and featurize the batch: (B, n_mels, n_max // 160)."""
    lengths = [c.size for c in clips]
    batch = np.zeros((len(clips), max(lengths)), np.float32)  # (B, n_max)
    for row, clip in zip(batch, clips):
        row[: clip.size] = clip
    return log_mel_spectrogram(batch, n_mels=n_mels, lengths=lengths, device=device)


def _theirs(extractor: WhisperFeatureExtractor, clips: list[np.ndarray]) -> np.ndarray:
    """The extractor's default call: each clip padded to 30 s -> (B, n_mels, 3000)."""
    return extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]


def _best_time(fn, repeats: int, device) -> tuple[float, object]:
    """Best wall time (s) of `repeats` runs after one warm-up run, and the last result."""
    result, best = fn(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result
