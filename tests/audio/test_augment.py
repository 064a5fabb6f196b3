"""Augmentation: seeded, bounded, and doing what it says (mask widths, speed, exact SNR)."""

import math

import numpy as np
import pytest
import torch

from mmtune.audio.augment import (add_noise, band_limit, channel_eq, gain, reverberate, spec_augment, speed_perturb,
                                  vtlp)
from mmtune.audio.features import log_mel_spectrogram

SR = 16000  # Hz


def features(n_mels: int = 80, frames: int = 300) -> torch.Tensor:
    """(n_mels, T) values where no row or column equals the mean by chance."""
    return torch.rand(n_mels, frames, generator=torch.Generator().manual_seed(123)) + 0.5


def masked_rows_and_cols(out: torch.Tensor, fill: torch.Tensor) -> tuple[int, int]:
    hit = out == fill  # (n_mels, T)
    return int(hit.all(dim=1).sum()), int(hit.all(dim=0).sum())


def test_spec_augment_same_seed_same_output_different_seed_different():
    x = features()
    a = spec_augment(x, generator=torch.Generator().manual_seed(0))
    b = spec_augment(x, generator=torch.Generator().manual_seed(0))
    c = spec_augment(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.equal(x, features())  # input left untouched


@pytest.mark.parametrize("seed", range(20))
def test_spec_augment_one_mask_width_within_bounds(seed):
    x = features()
    out = spec_augment(x, num_masks=1, freq_mask=15, time_mask=50, generator=torch.Generator().manual_seed(seed))
    rows, cols = masked_rows_and_cols(out, x.mean())
    assert 0 <= rows <= 15 and 0 <= cols <= 50
    changed = out != x
    # everything changed lies in the masked rows or columns, and is exactly the clip's mean
    assert torch.count_nonzero(changed) == rows * x.shape[1] + cols * x.shape[0] - rows * cols
    assert torch.all(out[changed] == x.mean())


def test_spec_augment_two_masks_cover_at_most_twice_the_width():
    x = features()
    widths = []
    for seed in range(50):
        out = spec_augment(x, generator=torch.Generator().manual_seed(seed))
        widths.append(masked_rows_and_cols(out, x.mean()))
    assert all(rows <= 30 and cols <= 100 for rows, cols in widths)
    assert max(rows for rows, _ in widths) > 15  # two bands do stack up


def test_spec_augment_caps_time_mask_at_clip_length():
    x = features(frames=10)
    for seed in range(20):
        out = spec_augment(x, num_masks=1, time_mask=50, generator=torch.Generator().manual_seed(seed))
        assert masked_rows_and_cols(out, x.mean())[1] <= 10
    assert spec_augment(torch.zeros(80, 0)).shape == (80, 0)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_perturb_changes_length_and_pitch_together(factor):
    t = np.arange(SR) / SR
    clip = (0.5 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)  # 1 s at 400 Hz
    out = speed_perturb(clip, factor)
    assert out.dtype == np.float32
    assert out.shape == (math.ceil(SR / factor),)
    spectrum = np.abs(np.fft.rfft(out))
    peak = np.fft.rfftfreq(out.size, 1 / SR)[spectrum.argmax()]
    assert abs(peak - 400 * factor) <= 1.5  # bin width is about 1 Hz


def test_speed_perturb_rejects_non_positive_factor():
    with pytest.raises(ValueError, match="speed factor must be > 0"):
        speed_perturb(np.zeros(100, np.float32), 0.0)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_add_noise_hits_the_snr(snr_db):
    clip = np.sin(2 * np.pi * 300 * np.arange(SR) / SR).astype(np.float32) * 0.3
    out = add_noise(clip, snr_db, np.random.default_rng(0))
    noise = out.astype(np.float64) - clip
    measured = 10 * np.log10(np.mean(clip.astype(np.float64) ** 2) / np.mean(noise**2))
    assert out.dtype == np.float32 and out.shape == clip.shape
    assert abs(measured - snr_db) < 0.1


def test_add_noise_is_seeded():
    clip = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    a = add_noise(clip, 10.0, np.random.default_rng(0))
    b = add_noise(clip, 10.0, np.random.default_rng(0))
    c = add_noise(clip, 10.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_add_noise_leaves_silence_alone():
    silence = np.zeros(100, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 10.0, np.random.default_rng(0)), silence)


def tone(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)  # (n,)


def spectrum_share_above(x: np.ndarray, hz: float) -> float:
    """Fraction of the clip's energy above `hz`."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return float(power[freqs > hz].sum() / power.sum())


def test_reverberate_keeps_length_and_peak_and_is_seeded():
    x = tone(0.5)
    x[4000:] = 0.0  # a burst, then silence the room fills
    a = reverberate(x, 0.5, np.random.default_rng(0))
    b = reverberate(x, 0.5, np.random.default_rng(0))
    c = reverberate(x, 0.5, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() == pytest.approx(np.abs(x).max(), rel=1e-5)
    assert np.abs(a[:4000]).max() > 0.1  # the direct sound is there
    assert np.sqrt(np.mean(a[4500:6000] ** 2)) > 1e-3  # the tail sounds after the burst ...


def test_reverberate_tail_decays_by_rt60():
    x = np.zeros(SR, dtype=np.float32)
    x[0] = 1.0  # an impulse: the output is the room's response
    out = reverberate(x, 0.4, np.random.default_rng(3)).astype(np.float64)
    early = np.mean(out[160:1760] ** 2)  # 10-110 ms
    late = np.mean(out[160 + 3200:1760 + 3200] ** 2)  # 200 ms later: 30 dB lower at RT60 0.4 s
    assert 10 * np.log10(early / late) == pytest.approx(30.0, abs=4.0)
    assert np.abs(out[int(0.4 * SR):]).max() < 1e-9  # no response past RT60 (its length): FFT round-off only


def test_reverberate_rejects_bad_rt60_and_leaves_silence():
    with pytest.raises(ValueError, match="rt60"):
        reverberate(tone(), 0.0, np.random.default_rng(0))
    silence = np.zeros(100, dtype=np.float32)
    assert np.array_equal(reverberate(silence, 0.3, np.random.default_rng(0)), silence)


def test_band_limit_removes_what_is_above_half_the_rate():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR).astype(np.float32) * 0.1  # white: energy up to 8 kHz
    out = band_limit(x, 8000)
    assert out.shape == x.shape and out.dtype == np.float32
    assert spectrum_share_above(x, 4200) > 0.4
    assert spectrum_share_above(out, 4200) < 1e-3
    low = tone(1.0, 440.0)  # below 4 kHz: passes unchanged
    assert np.abs(band_limit(low, 8000)[100:-100] - low[100:-100]).max() < 0.01
    with pytest.raises(ValueError, match="rate"):
        band_limit(x, 16000)


def test_gain_scales_the_clip_and_shifts_its_log_mel_by_db_over_40():
    x = tone(1.0, 440.0) * 0.1
    louder = gain(x, 6.0)
    assert louder.dtype == np.float32 and np.allclose(louder, x * 10 ** (6 / 20), atol=1e-7)
    assert np.allclose(gain(louder, -6.0), x, atol=1e-7)
    a, b = log_mel_spectrogram(x, 80), log_mel_spectrogram(louder, 80)
    above = a > a.max() - 1.5  # well above the clip's floor (max - 2 in feature units)
    assert torch.allclose((b - a)[above], torch.full_like(a[above], 6.0 / 40), atol=1e-3)


def tone_features(hz: float) -> torch.Tensor:
    """Log-mel (80, 100) of one second of a pure tone."""
    t = np.arange(SR) / SR
    return log_mel_spectrogram(np.sin(2 * np.pi * hz * t).astype(np.float32), 80)


def test_vtlp_moves_a_tone_to_where_the_scaled_tone_lies_and_keeps_timing():
    for alpha in (0.9, 1.1):
        warped = vtlp(tone_features(1000.0), alpha)
        assert warped.shape == (80, 100)
        assert int(warped.mean(1).argmax()) == int(tone_features(1000.0 * alpha).mean(1).argmax())
    x = features()
    assert torch.equal(vtlp(x, 1.0), x)  # alpha 1: the identity
    # past the bend the warp returns to the band's edge: a tone near 8 kHz moves at most one bin
    top = int(tone_features(7800.0).mean(1).argmax())
    assert all(abs(int(vtlp(tone_features(7800.0), a).mean(1).argmax()) - top) <= 1 for a in (0.9, 1.1))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        vtlp(x, 0.0)


def test_channel_eq_is_one_smooth_seeded_curve_within_its_gain():
    x = features()
    gains = [(channel_eq(x, 6.0, np.random.default_rng(seed)) - x) * 40 for seed in range(20)]  # dB, (80, T)
    for g in gains:
        assert torch.allclose(g, g[:, :1].expand_as(g), atol=1e-4)  # the same response in every frame
        assert float(g.abs().max()) <= 6.0 + 1e-4
        assert float(g[:, 0].diff().abs().max()) < 1.0  # smooth: under 1 dB between neighbouring bins
    assert max(float(g.abs().max()) for g in gains) > 3.0  # and not a no-op
    assert torch.equal(channel_eq(x, 6.0, np.random.default_rng(1)), channel_eq(x, 6.0, np.random.default_rng(1)))
