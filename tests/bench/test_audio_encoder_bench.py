import json

import pytest
import torch

from mmtune.bench import audio_encoder


def test_tiny_run_returns_every_key_with_sane_values():
    result = audio_encoder.run(num_clips=2, seconds=1.0, batch_size=2, repeats=1)
    assert {"padded_clips_per_s", "varlen_clips_per_s", "speedup", "max_abs_diff"} <= set(result)
    json.dumps(result)
    assert result["padded_clips_per_s"] > 0 and result["varlen_clips_per_s"] > 0 and result["speedup"] > 0
    assert result["max_abs_diff"] < 1e-4  # a 30 s clip: the real-frames path is the stock encoder
    assert result["attention"] == {"padded": "sdpa", "varlen": "sdpa"}  # CPU: batched SDPA


def test_both_paths_encode_the_same_clips():
    encoder = audio_encoder.make_encoder("tiny")
    audio = audio_encoder.AudioEncoder(encoder)
    clips = torch.randn(3, 80, 120)
    padded = audio_encoder._padded(encoder, clips, 2, "cpu", torch.float32)
    varlen = audio_encoder._varlen(audio, clips, 2, "cpu", torch.float32)
    assert [tuple(t.shape) for t in padded] == [(2, 1500, 256), (1, 1500, 256)]
    assert [tuple(t.shape) for t in varlen] == [(2, 60, 256), (1, 60, 256)]


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="preset 'huge': use one of tiny, small"):
        audio_encoder.make_encoder("huge")
