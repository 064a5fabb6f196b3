"""load_audio: decode, mono, resample, and one MediaError message per kind of bad file."""

import re

import numpy as np
import pytest
import soundfile as sf

from mmtune.audio.io import SAMPLE_RATE, load_audio
from mmtune.errors import MediaError


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, sr: int) -> float:
    """Frequency of the largest FFT bin (1 Hz resolution for a 1 s clip)."""
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / sr)[spectrum.argmax()])


def test_wav_at_16k_is_returned_unchanged(tmp_path):
    clip = sine(440, 1.0, SAMPLE_RATE)
    sf.write(tmp_path / "a.wav", clip, SAMPLE_RATE, subtype="FLOAT")
    out = load_audio(tmp_path / "a.wav")
    assert out.dtype == np.float32 and out.shape == (16000,)
    np.testing.assert_array_equal(out, clip)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(440, 0.5, SAMPLE_RATE), sine(1000, 0.5, SAMPLE_RATE, amplitude=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    out = load_audio(str(tmp_path / "s.wav"))
    assert out.shape == (8000,)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)


def test_resample_8k_to_16k_keeps_duration_and_frequency(tmp_path):
    sf.write(tmp_path / "n.flac", sine(440, 1.0, 8000), 8000)
    out = load_audio(tmp_path / "n.flac")
    assert out.shape == (16000,)
    assert peak_hz(out, SAMPLE_RATE) == 440.0
    # the resampled sine keeps its amplitude (FLAC is 16-bit, soxr is near-transparent)
    assert abs(np.abs(out[1000:-1000]).max() - 0.5) < 0.01


def test_resample_to_other_rate(tmp_path):
    sf.write(tmp_path / "a.wav", sine(300, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    out = load_audio(tmp_path / "a.wav", sr=8000)
    assert out.shape == (8000,) and peak_hz(out, 8000) == 300.0


def test_ogg_round_trip(tmp_path):
    sf.write(tmp_path / "a.ogg", sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE, format="OGG", subtype="VORBIS")
    out = load_audio(tmp_path / "a.ogg")
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert peak_hz(out, SAMPLE_RATE) == 440.0


def test_missing_file(tmp_path):
    path = tmp_path / "nope.flac"
    with pytest.raises(MediaError, match=f"^audio file not found: {re.escape(str(path))} "):
        load_audio(path)


def test_truncated_flac(tmp_path):
    sf.write(tmp_path / "full.flac", sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    path = tmp_path / "cut.flac"
    path.write_bytes((tmp_path / "full.flac").read_bytes()[:100])
    with pytest.raises(MediaError, match=f"^cannot decode audio {re.escape(str(path))}: .+"):
        load_audio(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all " * 20)
    with pytest.raises(MediaError, match=f"^cannot decode audio {re.escape(str(path))}: .*Format not recognised"):
        load_audio(path)


def test_zero_sample_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(MediaError, match=f"^audio file {re.escape(str(path))} has no samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_samples(tmp_path, bad):
    path = tmp_path / "nan.wav"
    clip = sine(440, 0.1, SAMPLE_RATE)
    clip[10] = bad
    sf.write(path, clip, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(MediaError, match=f"^audio file {re.escape(str(path))} contains NaN or Inf samples"):
        load_audio(path)


def test_librosa_fallback_when_soundfile_read_fails(tmp_path, monkeypatch):
    left, right = sine(440, 0.5, 8000), sine(1000, 0.5, 8000, amplitude=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")

    def fail(*args, **kwargs):
        raise sf.LibsndfileError(0, "pretend libsndfile cannot read this format")

    monkeypatch.setattr(sf, "read", fail)  # librosa.load still opens it through sf.SoundFile
    out = load_audio(tmp_path / "s.wav")
    assert out.shape == (8000,) and out.dtype == np.float32
    assert peak_hz(out, SAMPLE_RATE) == 440.0
