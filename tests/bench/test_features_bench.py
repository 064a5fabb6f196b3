"""The feature benchmark runs small, reports every figure, and agrees with the extractor."""

import numpy as np

from mmtune.bench.features import clip_durations, make_clips, max_abs_diff, run, shared_frames

KEYS = {"speedup", "max_abs_diff", "ours_clips_per_s", "extractor_clips_per_s", "num_clips", "device"}


def test_small_run_reports_all_keys_and_matches_extractor():
    result = run(num_clips=4, seconds=(1, 3), repeats=1)
    assert KEYS <= result.keys()
    assert result["num_clips"] == 4 and result["device"] == "cpu"
    assert result["max_abs_diff"] <= 1e-4
    assert all(result[k] > 0 for k in ("speedup", "ours_clips_per_s", "extractor_clips_per_s"))


def test_clip_durations_are_log_normal_and_clamped():
    seconds = clip_durations(2000, (1, 20), np.random.default_rng(3))
    assert seconds.min() == 1.0 and seconds.max() == 20.0  # both clamps are hit
    assert 3.8 < np.median(seconds) < 4.2  # median 4 s


def test_clip_mix_is_seeded():
    clips = make_clips(3, seconds=(1, 2), seed=3)
    again = make_clips(3, seconds=(1, 2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))
    assert not np.array_equal(clips[0][:16000], make_clips(1, seconds=(1, 2), seed=4)[0][:16000])
    assert all(c.dtype == np.float32 and np.isfinite(c).all() and 16000 <= c.size <= 32000 for c in clips)


def test_shared_frames_and_diff_ignore_frames_past_each_clip():
    assert [shared_frames(n) for n in (159, 16000, 479999, 480000, 960000)] == [0, 100, 2999, 2999, 2999]
    ours = np.zeros((1, 2, 10), np.float32)
    theirs = np.zeros((1, 2, 3000), np.float32)
    theirs[0, :, 5:] = 9.0  # past the clip's 5 frames: not compared
    theirs[0, 1, 4] = 0.5
    assert max_abs_diff(ours, theirs, [5 * 160 + 20]) == 0.5
