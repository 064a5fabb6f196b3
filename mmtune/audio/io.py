"""Audio decoding: a file on disk, or its bytes from a dataset or tar shard -> mono float32 at 16 kHz.

soundfile (libsndfile) decodes WAV, FLAC, OGG and MP3; anything else goes through
librosa.load. Resampling is soxr, as in librosa.resample. torchaudio is never imported.
Every failure is a `MediaError` that names the file and says what to do about it.

    load_audio("a.flac")                              # (n,) float32 at 16 kHz
    load_audio("shard-0.tar/k1.flac", data=raw)       # the same from the file's bytes
    num_samples("a.flac")                             # n, from the header alone (no decode)
"""

import io
import math
import os
import warnings

import librosa
import numpy as np
import soundfile as sf
import soxr

from mmtune.errors import MediaError

SAMPLE_RATE = 16000  # Hz, what Whisper-style encoders expect
RESAMPLE_QUALITY = "HQ"  # soxr quality, the one librosa.resample uses by default


def load_audio(path, sr: int = SAMPLE_RATE, data: bytes | None = None) -> np.ndarray:
    """Decode `path` (or `data`, the file's bytes; `path` then only names it), average its
    channels and resample to `sr` Hz.

    Returns float32 samples, shape (n,), n = ceil(n_file * sr / file_sr).
    Raises MediaError when the file is missing, undecodable, empty or holds NaN/Inf.
    """
    path = os.fspath(path)
    _check_exists(path, data)
    samples, file_sr = _decode(path, data)  # (n, channels)
    mono = samples.mean(axis=1, dtype=np.float32)  # (n,)
    _check_samples(path, mono)
    return resample(mono, file_sr, sr)


def num_samples(path, sr: int = SAMPLE_RATE, data: bytes | None = None) -> int:
    """Samples `load_audio` returns, read from the file's header (no decode): ceil(frames * sr / file_sr).

    Formats whose header libsndfile cannot read are decoded once instead. Raises MediaError for a
    missing file, an unreadable header or an empty clip. A header can lie (a truncated file); the
    data step re-measures a clip whose decoded length disagrees.
    """
    path = os.fspath(path)
    _check_exists(path, data)
    try:
        info = sf.info(io.BytesIO(data) if data is not None else path)
        frames, file_sr = info.frames, info.samplerate
    except (sf.SoundFileError, RuntimeError):
        return len(load_audio(path, sr, data))
    if frames <= 0:
        raise MediaError(f"audio file {path} has no samples (replace the file or drop the row)")
    return math.ceil(frames * sr / file_sr)


def _check_exists(path: str, data: bytes | None) -> None:
    if data is None and not os.path.isfile(path):
        raise MediaError(
            f"audio file not found: {path} "
            "(check the path; relative paths resolve against the manifest's folder)"
        )


def resample(samples: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
    """Resample (n,) samples with soxr (high quality) -> float32 (ceil(n * target_sr / orig_sr),).

    The length rule is librosa.resample's: soxr's rounded output is zero-padded or trimmed to it.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    out = soxr.resample(samples, orig_sr, target_sr, quality=RESAMPLE_QUALITY)
    n_out = math.ceil(samples.size * target_sr / orig_sr)
    return np.pad(out[:n_out], (0, max(0, n_out - out.size)))


def _decode(path: str, data: bytes | None = None) -> tuple[np.ndarray, int]:
    """Samples (n, channels) float32 and the file's rate: soundfile first, then librosa."""
    try:
        samples, file_sr = sf.read(io.BytesIO(data) if data is not None else path, dtype="float32",
                                   always_2d=True)
        return samples, file_sr
    except (sf.SoundFileError, RuntimeError) as error:
        reason = str(error)
    try:
        with warnings.catch_warnings():  # librosa warns before its audioread fallback
            warnings.simplefilter("ignore")
            samples, file_sr = librosa.load(io.BytesIO(data) if data is not None else path, sr=None, mono=False,
                                            dtype=np.float32)
    except Exception:  # any backend failure is a decode failure; libsndfile's reason is clearer
        raise MediaError(
            f"cannot decode audio {path}: {reason} "
            "(re-encode it, e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.flac`, or drop the row)"
        ) from None
    return np.atleast_2d(samples).T, int(file_sr)  # librosa gives (channels, n) or (n,)


def _check_samples(path: str, mono: np.ndarray) -> None:
    """Reject clips a model cannot use: no samples, or NaN/Inf values."""
    if mono.size == 0:
        raise MediaError(f"audio file {path} has no samples (replace the file or drop the row)")
    if not np.isfinite(mono).all():
        raise MediaError(
            f"audio file {path} contains NaN or Inf samples (re-export the file or drop the row)"
        )
