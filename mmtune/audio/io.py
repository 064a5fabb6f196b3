"""Audio decoding: a file on disk, or its bytes from a dataset or tar shard -> mono float32 at 16 kHz.

soundfile (libsndfile) decodes WAV, FLAC, OGG and MP3; anything else goes through
librosa.load. Resampling is soxr, as in librosa.resample. torchaudio is never imported.
Every failure is a `MediaError` that names the file and says what to do about it.

    load_audio("a.flac")                              # (n,) float32 at 16 kHz
    load_audio("a.flac", max_seconds=600)             # a longer clip refused from its header, before decoding
    load_audio("shard-0.tar/k1.flac", data=raw)       # the same from the file's bytes
    num_samples("a.flac")                             # n, from the header alone (no decode)

A file whose data ends before its header says is refused as truncated: for WAV from the RIFF
chunk sizes against the file's size (libsndfile silently returns the samples that are there),
for other formats when fewer samples decode than the header counts.
"""

import io
import math
import os
import struct
import warnings

import librosa
import numpy as np
import soundfile as sf
import soxr

from mmtune.errors import MediaError, unreadable

SAMPLE_RATE = 16000  # Hz, what Whisper-style encoders expect
RESAMPLE_QUALITY = "HQ"  # soxr quality, the one librosa.resample uses by default
FRAME = SAMPLE_RATE // 100  # 160 samples (10 ms): clip lengths are limited in whole frames, as mel frames count them
MP3_SLACK = 2 * 1152  # samples (two MPEG frames) an MP3 header's length may be off by without a Xing/LAME tag
RIFF_PCM_TAGS = (1, 3, 6, 7, 0xFFFE)  # PCM, IEEE float, A-law, mu-law, WAVE_FORMAT_EXTENSIBLE: one frame per block
# A data size of 0 or this much and more (~2 GiB) is what a writer that cannot seek back leaves as the length
# (sox: 0x7ffff000, ffmpeg: 0xffffffff): such a file is read to its end, not called truncated.
RIFF_STREAMING_SIZE = 0x7FFF0000
RIFF_MAX_CHUNKS = 64  # chunks read before "data" (fmt, LIST, bext, JUNK, ...) before the check gives up
UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count when the header leaves the length out (a piped FLAC)


def load_audio(path, sr: int = SAMPLE_RATE, data: bytes | None = None,
               max_seconds: float | None = None) -> np.ndarray:
    """Decode `path` (or `data`, the file's bytes; `path` then only names it), average its
    channels and resample to `sr` Hz.

    Returns float32 samples, shape (n,), n = ceil(n_file * sr / file_sr).
    Raises MediaError when the file is missing, unreadable, truncated, undecodable, empty or holds
    NaN/Inf, or (with `max_seconds`, data.max_audio_seconds) is longer than that: from the header,
    before decoding, wherever libsndfile reads the header.
    """
    path = os.fspath(path)
    _check_file(path, data)
    header = _header(path, data)
    if header is not None and max_seconds is not None:
        check_duration(path, math.ceil(header.frames * SAMPLE_RATE / header.samplerate), max_seconds)
    samples, file_sr = _decode(path, data)  # (n, channels)
    if header is not None and file_sr == header.samplerate:
        _check_decoded_length(path, header, len(samples))
    mono = samples.mean(axis=1, dtype=np.float32)  # (n,)
    _check_samples(path, mono)
    if header is None and max_seconds is not None:  # no header to read: measured once decoded
        check_duration(path, math.ceil(mono.size * SAMPLE_RATE / file_sr), max_seconds)
    return resample(mono, file_sr, sr)


def num_samples(path, sr: int = SAMPLE_RATE, data: bytes | None = None) -> int:
    """Samples `load_audio` returns, read from the file's header (no decode): ceil(frames * sr / file_sr).

    Formats whose header libsndfile cannot read are decoded once instead. Raises MediaError for a
    missing file, an unreadable header, a WAV cut short of its header's length or an empty clip.
    Other formats can still lie (a FLAC cut short); `load_audio` refuses those when it decodes them.
    """
    path = os.fspath(path)
    _check_file(path, data)
    header = _header(path, data)
    if header is None:
        return len(load_audio(path, sr, data))
    if header.frames <= 0:
        raise MediaError(f"audio file {path} has no samples (replace the file or drop the row)")
    return math.ceil(header.frames * sr / header.samplerate)


def check_duration(path, n: int, max_seconds: float, window_seconds: float | None = None) -> None:
    """Refuse a clip of n samples at 16 kHz longer than data.max_audio_seconds (the one wording of it).

    Counted in whole 10 ms frames, n // 160 against round(max_seconds * 100), as the data step counts
    mel frames: a clip the length index accepts is never refused when decoded. window_seconds (the
    model's audio window) only makes the advice exact.
    """
    frames, limit = n // FRAME, round(float(max_seconds) * SAMPLE_RATE / FRAME)
    if frames > limit:
        windows = f"{window_seconds:g} s windows" if window_seconds else "windows of model.audio.window_seconds"
        raise MediaError(f"audio file {path} is {frames * FRAME / SAMPLE_RATE:.1f} s long, over "
                         f"data.max_audio_seconds={max_seconds:g}: raise it (the clip is encoded in {windows}) "
                         "or split the file")


def _check_file(path: str, data: bytes | None) -> None:
    """Open the file once, so a bad path is told its real reason (libsndfile says only "System error"),
    and refuse a WAV cut short of its header's length."""
    if data is not None:
        _check_riff_complete(path, io.BytesIO(data))
        return
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        link = f"; it is a symlink to {os.readlink(path)}, which does not exist" if os.path.islink(path) else ""
        raise MediaError(f"audio file not found: {path} (check the path{link}; relative paths resolve against "
                         "the manifest's folder)") from None
    except OSError as e:
        raise MediaError(f"audio file {path} {unreadable(path, e, 'an audio file')}") from None
    with f:
        _check_riff_complete(path, f)


def _header(path: str, data: bytes | None):
    """libsndfile's reading of the header (.frames, .samplerate, .format), or None where it gives no length."""
    try:
        header = sf.info(io.BytesIO(data) if data is not None else path)
    except (sf.SoundFileError, RuntimeError):
        return None
    return header if header.frames != UNKNOWN_FRAMES and header.samplerate > 0 else None


def _check_riff_complete(path: str, f) -> None:
    """Refuse a RIFF/WAVE file (`f`, open) whose data chunk ends past the end of the file. libsndfile
    clamps its frame count to the bytes that are there, so only the header's own chunk size tells."""
    layout = _riff_layout(f)
    if layout is None:
        return
    fmt, start, claimed = layout
    present = f.seek(0, io.SEEK_END) - start  # bytes of sample data in the file
    if claimed == 0 or claimed >= RIFF_STREAMING_SIZE or present >= claimed:
        return
    said, got = _riff_frames(claimed, fmt), _riff_frames(present, fmt)
    raise MediaError(_truncated(path, said, got, fmt[1]))


def _truncated(path, said: int, got: int, rate: int) -> str:
    return (f"audio file {path} is truncated: its header says {said} samples ({said / rate:.2f} s) but the data "
            f"ends after {got} ({got / rate:.2f} s); re-download or re-encode it from the original, or drop the row")


def _riff_layout(f) -> tuple[tuple[int, int, int, int], int, int] | None:
    """((format tag, rate, byte rate, block align), data offset, data size in bytes) of a RIFF/WAVE
    file, or None for anything else (RF64, W64, no fmt chunk before data, a header cut short)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return None
    fmt = None
    for _ in range(RIFF_MAX_CHUNKS):
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        kind, size = struct.unpack("<4sI", chunk)
        if kind == b"data":
            return (fmt, f.tell(), size) if fmt is not None else None
        if kind == b"fmt ":
            body = f.read(16)  # WAVE_FORMAT_EXTENSIBLE adds fields after these; the first 14 bytes are the same
            if size < 16 or len(body) < 16:
                return None
            tag, _, rate, byte_rate, block_align = struct.unpack("<HHIIH", body[:14])
            if rate == 0:
                return None
            fmt, size = (tag, rate, byte_rate, block_align), size - 16
        f.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to an even size
    return None


def _riff_frames(n_bytes: int, fmt: tuple[int, int, int, int]) -> int:
    """Frames (samples per channel) in n_bytes of a data chunk: exact for PCM, from the byte rate otherwise."""
    tag, rate, byte_rate, block_align = fmt
    if tag in RIFF_PCM_TAGS and block_align:
        return n_bytes // block_align
    return n_bytes * rate // byte_rate if byte_rate else 0


def _check_decoded_length(path: str, header, n: int) -> None:
    """Fewer frames decoded than the header counts: the data ends early (FLAC, OGG, MP3)."""
    slack = max(MP3_SLACK, header.frames // 100) if header.format == "MP3" else 0  # MP3 lengths may be estimates
    if header.frames - n > slack:
        raise MediaError(_truncated(path, header.frames, n, header.samplerate))


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
    except ValueError:  # soundfile sizes its array from the header's frame count: none was written
        reason = "its header gives no length (written to a pipe?)"
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
