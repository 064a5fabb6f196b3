"""Audio longer than one encoder window: cut into windows, each encoded on its real frames, tokens joined."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mmtune.audio.features import log_mel_spectrogram, windowed_log_mel
from mmtune.collators import collate_packed, collate_padded
from mmtune.config import ConfigError, DataConfig, TowerConfig
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.formats import Sample
from mmtune.model.build import build_model
from mmtune.model.placeholders import audio_windows, num_audio_tokens, window_frames
from tests.tiny import TINY_WHISPER, tiny_model_config


def test_a_75_s_clip_is_three_windows_and_their_tokens():
    assert audio_windows(7500) == [3000, 3000, 1500]
    assert num_audio_tokens(7500, stack=2) == 750 + 750 + 375
    assert num_audio_tokens(7500, stack=1) == 1500 + 1500 + 750
    assert num_audio_tokens(3000, stack=2) == 750  # one window: as before
    assert num_audio_tokens(6001, stack=2, window=3000) == 750 + 750 + 1  # a 10 ms tail is one token
    assert num_audio_tokens(25, stack=2, window=10) == sum(num_audio_tokens(n, 2) for n in (10, 10, 5))


def test_window_is_bounded_by_what_the_encoder_takes():
    assert window_frames(30.0, 1500) == 3000
    assert window_frames(0.5, 1500) == 50
    with pytest.raises(ConfigError, match="window_seconds: 40.0 s is longer than the encoder takes \\(30 s\\)"):
        window_frames(40.0, 1500)


def test_windowed_features_are_each_window_computed_alone():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(16000 * 75 // 10).astype(np.float32)  # 7.5 s
    got = windowed_log_mel(wave, 80, window=300)  # 3 s windows: 300, 300, 150 frames
    parts = [log_mel_spectrogram(wave[a : a + 48000], 80) for a in (0, 48000, 96000)]
    assert got.shape == (80, 750)
    torch.testing.assert_close(got, torch.cat(parts, dim=-1))
    torch.testing.assert_close(windowed_log_mel(wave[:40000], 80, window=300), log_mel_spectrogram(wave[:40000], 80))


def _model(tokenizer_dir, window_seconds):
    cfg = tiny_model_config(tokenizer_dir, vision=False)
    cfg.audio = TowerConfig(config=dict(TINY_WHISPER), train="full", projector=cfg.audio.projector,
                            window_seconds=window_seconds)
    model, tokenizer = build_model(cfg)
    return model.eval(), tokenizer, cfg


def test_a_long_clip_gives_exactly_its_windows_tokens_in_order(tokenizer_dir):
    model, _, _ = _model(tokenizer_dir, window_seconds=0.3)  # 30-frame windows
    assert model.audio_window == 30
    torch.manual_seed(0)
    long, short = torch.randn(80, 75), torch.randn(80, 12)
    features = torch.zeros(2, 80, 75)
    features[0], features[1, :, :12] = long, short
    with torch.no_grad():
        got = model.audio_tokens(features, torch.tensor([75, 12]))
        alone = [model.audio_tokens(w[None], torch.tensor([w.shape[-1]]))[0]
                 for w in (long[:, :30], long[:, 30:60], long[:, 60:], short)]
    assert got[0].shape[0] == num_audio_tokens(75, 2, window=30) == 8 + 8 + 4
    torch.testing.assert_close(got[0], torch.cat(alone[:3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], alone[3], atol=1e-5, rtol=1e-5)


def _wav(path, seconds, freq):
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return str(path)


def _asr(path, text):
    return Sample([{"role": "user", "content": [{"type": "audio", "path": path},
                                                {"type": "text", "text": "Transcribe the audio."}]},
                   {"role": "assistant", "content": [{"type": "text", "text": text}]}], f"{path}:1")


@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_long_and_short_clips_pack_together_with_the_padded_loss(tmp_path, tokenizer_dir, attn):
    cfg = tiny_model_config(tokenizer_dir, vision=False)
    cfg.attn_implementation = attn
    cfg.audio = TowerConfig(config=dict(TINY_WHISPER), train="full", projector=cfg.audio.projector,
                            window_seconds=0.5)
    model, tokenizer = build_model(cfg)
    data = DataConfig(max_audio_seconds=3.0)
    encoder = SampleEncoder(tokenizer, MediaSpec.from_config(cfg, data), data)
    samples = [_asr(_wav(tmp_path / "long.wav", 2.2, 300), "three one four"),
               _asr(_wav(tmp_path / "short.wav", 0.3, 500), "nine"),
               _asr(_wav(tmp_path / "mid.wav", 1.0, 700), "two six")]
    examples = [encoder(s) for s in samples]
    audio_id = tokenizer.convert_tokens_to_ids("<|audio|>")
    assert int((examples[0].input_ids == audio_id).sum()) == num_audio_tokens(220, 2, window=50) == 4 * 13 + 5
    assert encoder.measure(samples[0]).tokens == len(examples[0])
    with torch.no_grad():
        padded = model.eval()(**collate_padded(examples, tokenizer.pad_token_id))
        packed = model(**collate_packed(examples))
    assert padded.num_tokens == packed.num_tokens
    torch.testing.assert_close(packed.loss_sum, padded.loss_sum, atol=1e-5, rtol=1e-6)


def test_a_clip_over_max_audio_seconds_is_refused_from_its_header(tmp_path, tokenizer_dir):
    _, tokenizer, cfg = _model(tokenizer_dir, window_seconds=30)
    data = DataConfig(max_audio_seconds=2.0)
    encoder = SampleEncoder(tokenizer, MediaSpec.from_config(cfg, data), data)
    sample = _asr(_wav(tmp_path / "long.wav", 2.5, 300), "three")
    with pytest.raises(Exception, match="is 2.5 s long, over data.max_audio_seconds=2: raise it"):
        encoder.measure(sample)


def test_transcribe_takes_a_recording_longer_than_a_window(tmp_path, tokenizer_dir):
    from mmtune.infer.generate import Predictor

    model, tokenizer, cfg = _model(tokenizer_dir, window_seconds=0.5)
    predictor = Predictor(model, tokenizer, cfg, DataConfig(max_audio_seconds=5.0))
    path = _wav(tmp_path / "talk.wav", 2.2, 300)
    prompt = predictor.encoder.prompt(predictor.sample("Transcribe the audio.", [("audio", path)]))
    assert int((prompt.input_ids == tokenizer.convert_tokens_to_ids("<|audio|>")).sum()) == num_audio_tokens(220, 2, 50)
    texts = predictor.transcribe([path, _wav(tmp_path / "short.wav", 0.3, 500)], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_transcribe_gives_long_recordings_room_for_their_words(tmp_path, tokenizer_dir, monkeypatch):
    from mmtune.infer import generate as gen_module
    from mmtune.infer.generate import Predictor

    model, tokenizer, cfg = _model(tokenizer_dir, window_seconds=0.5)
    predictor = Predictor(model, tokenizer, cfg, DataConfig(max_audio_seconds=60.0))
    asked = []
    monkeypatch.setattr(gen_module, "generate", lambda m, t, examples, **kw: asked.append(kw["max_new_tokens"])
                        or [""] * len(examples))
    predictor.transcribe([_wav(tmp_path / "short.wav", 0.3, 500)])
    predictor.transcribe([_wav(tmp_path / "short.wav", 0.3, 500), _wav(tmp_path / "talk.wav", 20.2, 300)])
    predictor.transcribe([str(tmp_path / "talk.wav")], max_new_tokens=5)
    assert asked == [32, 81, 5]  # the default, 4 a second of the longest clip, the caller's
