"""log_mel_spectrogram: same numbers as transformers' WhisperFeatureExtractor, any length, batched."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from mmtune.audio.features import HOP_LENGTH, log_mel_spectrogram, mel_filters, num_frames

SR = 16000  # Hz
ATOL = 1e-4  # the contract with the extractor


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 120 Hz voice, 4 Hz syllable envelope that reaches silence, light noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.5 * t)) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * envelope * voice + 0.003 * rng.standard_normal(n)).astype(np.float32)


def compared_frames(n: int) -> int:
    """Frames we hold equal to the extractor's: all n // 160 below 30 s; at 30 s the extractor
    reflects its last window (frame 2999 reaches 40 samples past its 30 s cut) where we read zeros."""
    return min(num_frames(n), 2999)


@pytest.fixture(scope="module", params=[80, 128])
def n_mels(request):
    return request.param


@pytest.mark.parametrize("seconds", [0.5, 3.7, 30.0])
def test_matches_whisper_feature_extractor(n_mels, seconds):
    clip = speech_like(int(seconds * SR))
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    theirs = extractor(clip, sampling_rate=SR, return_tensors="np")["input_features"][0]  # (n_mels, 3000)
    ours = log_mel_spectrogram(clip, n_mels=n_mels)  # (n_mels, n // 160)
    assert ours.dtype == torch.float32 and ours.shape == (n_mels, clip.size // HOP_LENGTH)
    t = compared_frames(clip.size)
    diff = np.abs(ours.numpy()[:, :t] - theirs[:, :t]).max()
    assert diff <= ATOL, f"max abs diff {diff:.2e} for {n_mels} mels, {seconds} s"


@pytest.mark.parametrize("seconds", [0.5, 3.7])
def test_matches_extractor_numpy_float64_path(n_mels, seconds):
    """The extractor's numpy path (float64 STFT) is an independent reference for our float32 STFT."""
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    if not hasattr(extractor, "_np_extract_fbank_features"):
        pytest.skip("this transformers has no numpy feature path")
    clip = speech_like(int(seconds * SR), seed=1)
    padded = np.zeros((1, 30 * SR), np.float32)
    padded[0, : clip.size] = clip
    theirs = extractor._np_extract_fbank_features(padded, "cpu")[0]  # (n_mels, 3000)
    ours = log_mel_spectrogram(clip, n_mels=n_mels).numpy()
    diff = np.abs(ours - theirs[:, : ours.shape[1]]).max()
    assert diff <= ATOL, f"max abs diff {diff:.2e}"


def test_batch_equals_single_clips(n_mels):
    lengths = [8000, 59200, 19751, 100]  # 0.5 s, 3.7 s, a length off the hop grid, under one hop
    clips = [speech_like(n, seed=i) for i, n in enumerate(lengths)]
    batch = np.full((len(clips), max(lengths)), 0.7, np.float32)  # non-zero padding must be ignored
    for row, clip in zip(batch, clips):
        row[: clip.size] = clip
    out = log_mel_spectrogram(batch, n_mels=n_mels, lengths=lengths)  # (B, n_mels, T)
    assert out.shape == (4, n_mels, max(lengths) // HOP_LENGTH)
    for b, clip in enumerate(clips):
        single = log_mel_spectrogram(clip, n_mels=n_mels)
        t = num_frames(clip.size)
        assert single.shape == (n_mels, t)
        torch.testing.assert_close(out[b, :, :t], single, atol=1e-6, rtol=0)
        assert torch.count_nonzero(out[b, :, t:]) == 0


def test_tensor_input_without_lengths_is_full_width():
    batch = torch.from_numpy(np.stack([speech_like(3200, seed=0), speech_like(3200, seed=1)]))
    out = log_mel_spectrogram(batch, device="cpu")
    assert out.shape == (2, 80, 20)
    torch.testing.assert_close(out[1], log_mel_spectrogram(batch[1]), atol=1e-6, rtol=0)


def test_num_frames_and_short_clips():
    assert [num_frames(n) for n in (0, 159, 160, 8000, 8159, 480000)] == [0, 0, 1, 50, 50, 3000]
    assert log_mel_spectrogram(np.zeros(100, np.float32)).shape == (80, 0)
    one = log_mel_spectrogram(speech_like(160))  # one frame: reflect start, zeros after
    assert one.shape == (80, 1) and torch.isfinite(one).all()


def test_silence_is_the_floor_value():
    """All-zero audio clamps to log10(1e-10) = -10; the max - 8 floor keeps it; (-10 + 4) / 4 = -1.5."""
    out = log_mel_spectrogram(np.zeros(1600, np.float32))
    assert torch.equal(out, torch.full((80, 10), -1.5))


def test_bad_shapes_and_lengths_raise():
    with pytest.raises(ValueError, match="must be"):
        log_mel_spectrogram(np.zeros((1, 2, 400), np.float32))
    with pytest.raises(ValueError, match=r"lengths must be 2 values in \[0, 400\]"):
        log_mel_spectrogram(np.zeros((2, 400), np.float32), lengths=[400, 401])


def test_mel_filters_are_cached_per_device():
    assert mel_filters(80, "cpu") is mel_filters(80, "cpu")
    assert mel_filters(128, "cpu").shape == (128, 201)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    clip = speech_like(int(3.7 * SR))
    gpu = log_mel_spectrogram(clip, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), log_mel_spectrogram(clip), atol=ATOL, rtol=0)


def test_whole_batch_path_equals_clip_by_clip_path():
    """The one-STFT batch path (used on CUDA) checked on CPU against the per-clip path (used on CPU)."""
    from mmtune.audio.features import _whole_batch

    lengths = [8000, 19751, 100]
    batch = torch.full((3, 19751), 0.7)
    for b, n in enumerate(lengths):
        batch[b, :n] = torch.from_numpy(speech_like(n, seed=b))
    whole = _whole_batch(batch, torch.tensor(lengths), 80)
    torch.testing.assert_close(whole, log_mel_spectrogram(batch, lengths=lengths), atol=1e-5, rtol=0)
