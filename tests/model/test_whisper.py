"""Whisper's own encoder-decoder: decoder prompt and labels, plans per part, the decoder pass against
transformers' own, real-frame batches, checkpoints, and the export that a plain pipeline runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmtune.collators import collate_padded
from mmtune.config import ConfigError, DataConfig, LoraConfig, ModelConfig, WhisperModelConfig, from_dict
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.example import IGNORE_INDEX
from mmtune.data.formats import Sample
from mmtune.errors import DataError
from mmtune.model.build import build_model
from mmtune.model.checkpoint import load_checkpoint, save_checkpoint, start_model

TOKENIZER = str(Path(__file__).resolve().parents[2] / "examples" / "whisper_digits" / "tokenizer")
TINY = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=100,
            max_target_positions=32)
SOT, EN, HI, TRANSCRIBE, NO_TIMESTAMPS, EOT = 50258, 50259, 50276, 50359, 50363, 50257


def whisper_config(encoder="full", decoder="full", encoder_input="padded", language="en") -> ModelConfig:
    return ModelConfig(whisper=WhisperModelConfig(config=dict(TINY), tokenizer=TOKENIZER, encoder=encoder,
                                                  decoder=decoder, encoder_input=encoder_input, language=language),
                       lora=LoraConfig(r=4, alpha=8, dropout=0.0), attn_implementation="sdpa")


def clip(folder: Path, name: str, seconds: float, freq: float = 300.0) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    path = folder / f"{name}.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return str(path)


def asr_sample(path: str, text: str, language: str | None = None, source: str = "m.jsonl:1") -> Sample:
    messages = [{"role": "user", "content": [{"type": "audio", "path": path}, {"type": "text", "text": "x"}]},
                {"role": "assistant", "content": [{"type": "text", "text": text}]}]
    return Sample(messages, source, language)


@pytest.fixture(scope="module")
def padded():
    return build_model(whisper_config())


def encoder_for(model_cfg, tokenizer, train=False) -> SampleEncoder:
    data = DataConfig(max_length=32)
    return SampleEncoder(tokenizer, MediaSpec.from_config(model_cfg, data), data, train=train)


def test_decoder_prompt_is_masked_and_transcript_supervised(padded, tmp_path):
    _, tokenizer = padded
    example = encoder_for(whisper_config(), tokenizer)(asr_sample(clip(tmp_path, "a", 0.5), "three one four"))
    text = tokenizer("three one four", add_special_tokens=False).input_ids
    assert example.input_ids.tolist() == [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS] + text + [EOT]
    assert example.labels.tolist() == [IGNORE_INDEX] * 4 + text + [EOT]
    assert example.audio[0].shape == (80, 200)  # padded to the encoder's window: 100 positions x 2 frames


def test_language_per_row_and_unknown_language(padded, tmp_path):
    _, tokenizer = padded
    encoder = encoder_for(whisper_config(), tokenizer)
    path = clip(tmp_path, "a", 0.5)
    assert encoder(asr_sample(path, "tin", "hindi")).input_ids[:4].tolist() == [SOT, HI, TRANSCRIBE, NO_TIMESTAMPS]
    assert encoder.prompt(asr_sample(path, "tin", "hi")).input_ids.tolist() == [SOT, HI, TRANSCRIBE, NO_TIMESTAMPS]
    with pytest.raises(DataError, match=r"m.jsonl:9.*'language' 'klingon' is not a Whisper language"):
        encoder(asr_sample(path, "x", "klingon", "m.jsonl:9"))
    english_only = encoder_for(whisper_config(language=None), tokenizer)
    assert english_only.prompt(asr_sample(path, "x")).input_ids.tolist() == [SOT, NO_TIMESTAMPS]


def test_rows_other_than_one_clip_and_a_transcript_are_refused(padded, tmp_path):
    _, tokenizer = padded
    encoder = encoder_for(whisper_config(), tokenizer)
    sample = asr_sample(clip(tmp_path, "a", 0.5), "one")
    sample.messages[0]["content"].append(dict(sample.messages[0]["content"][0]))
    with pytest.raises(DataError, match="one clip and its transcript per row"):
        encoder(sample)
    with pytest.raises(DataError, match="hears at most 2 s"):
        encoder(asr_sample(clip(tmp_path, "long", 2.5), "one"))
    short = SampleEncoder(tokenizer, MediaSpec.from_config(whisper_config(), DataConfig(max_length=6)),
                          DataConfig(max_length=6))
    with pytest.raises(DataError, match="over-length: 8 decoder tokens > 6"):
        short(asr_sample(clip(tmp_path, "b", 0.5), "one two three"))


@pytest.mark.parametrize("encoder,decoder", [("frozen", "lora"), ("full", "frozen"), ("lora", "full")])
def test_plans_per_part(encoder, decoder):
    model, _ = build_model(whisper_config(encoder, decoder))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for part, plan in (("encoder", encoder), ("decoder", decoder)):
        names = {n for n, _ in model.named_parameters() if f".model.{part}." in n}
        mine = trained & names
        if plan == "frozen":
            assert not mine
        elif plan == "lora":
            assert mine and all("lora_" in n for n in mine)
        else:
            assert mine == {n for n in names if "lora_" not in n}


def test_decoder_pass_equals_transformers_forward(padded, tmp_path):
    model, tokenizer = padded
    model.eval()
    encoder = encoder_for(whisper_config(), tokenizer)
    examples = [encoder(asr_sample(clip(tmp_path, f"c{i}", 0.4 + 0.3 * i, 200 + 150 * i), t))
                for i, t in enumerate(["three one four", "nine"])]
    batch = collate_padded(examples, tokenizer.pad_token_id)
    ours = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, T, V)
    theirs = model.whisper(input_features=batch["audio_features"], decoder_input_ids=batch["input_ids"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    out = model(**batch)  # loss over the supervised tokens = the transcript and <|endoftext|>
    assert out.num_tokens == sum(e.num_supervised for e in examples)


def test_real_frames_give_each_clip_the_same_result_in_any_batch(tmp_path):
    cfg = whisper_config(encoder_input="real")
    model, tokenizer = build_model(cfg)
    model.eval()
    encoder = encoder_for(cfg, tokenizer)
    short = encoder(asr_sample(clip(tmp_path, "s", 0.3), "one"))
    long = encoder(asr_sample(clip(tmp_path, "l", 1.5, 500), "two three"))
    assert short.audio[0].shape[-1] == 30  # the real frames only
    alone = model(**collate_padded([short], tokenizer.pad_token_id))
    together = model(**collate_padded([short, long], tokenizer.pad_token_id))
    second = model(**collate_padded([long], tokenizer.pad_token_id))
    assert torch.allclose(together.loss_sum, alone.loss_sum + second.loss_sum, atol=1e-4)
    prompts = [encoder.prompt(asr_sample(p, "")) for p in (str(tmp_path / "s.wav"), str(tmp_path / "l.wav"))]
    from mmtune.infer.generate import generate

    assert generate(model, tokenizer, prompts, max_new_tokens=5) == \
        [generate(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]


def test_checkpoint_round_trip_with_lora(tmp_path):
    cfg = whisper_config("lora", "lora")
    model, tokenizer = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # a trained state, not the initial zeros of LoRA B
    encoder = encoder_for(cfg, tokenizer)
    batch = collate_padded([encoder(asr_sample(clip(tmp_path, "a", 0.6), "seven"))], tokenizer.pad_token_id)
    model.eval()
    before = model(**batch).loss_sum
    save_checkpoint(model, tokenizer, cfg, tmp_path / "ckpt")
    loaded, _, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg.kind == "whisper" and loaded_cfg.whisper.encoder == "lora"
    assert torch.allclose(loaded(**batch).loss_sum, before, atol=1e-5)


def test_config_refuses_mixed_kinds():
    with pytest.raises(ConfigError, match="exactly one of model.llm"):
        from_dict(ModelConfig, {}, "model.")
    with pytest.raises(ConfigError, match="remove model.audio"):
        from_dict(ModelConfig, {"whisper": {"config": TINY, "tokenizer": TOKENIZER},
                                "audio": {"config": {"model_type": "whisper"}}}, "model.")
    with pytest.raises(ConfigError, match="encoder_input: 'raw' is not one of padded, real"):
        from_dict(ModelConfig, {"whisper": {"config": TINY, "tokenizer": TOKENIZER, "encoder_input": "raw"}},
                  "model.")


def write_run(folder: Path, extra: str = "") -> str:
    (folder / "audio").mkdir(parents=True)
    words = ["zero", "one", "two", "three"]
    for i in range(8):
        clip(folder / "audio", str(i), 0.3 + 0.1 * i, 200 + 90 * i)
    rows = [json.dumps({"audio": f"audio/{i}.wav", "text": " ".join(words[: 1 + i % 3]), "voice": f"v{i % 2}"})
            for i in range(8)]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(rows[:3]) + "\n")
    config = f"""model:
  whisper: {{config: {json.dumps(TINY)}, tokenizer: {TOKENIZER}, encoder: full, decoder: lora}}
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
  attn_implementation: sdpa
data: {{train: train.jsonl, eval: eval.jsonl, batch_size: 4, max_length: 32, num_workers: 0}}
train: {{output_dir: {folder / 'run'}, max_steps: 3, lr: 1.0e-3, log_every: 1}}
eval: {{metrics: [loss, wer], max_new_tokens: 6, normalizer: whisper_english}}
{extra}"""
    (folder / "config.yaml").write_text(config)
    return str(folder / "config.yaml")


def test_cli_train_transcribe_export_and_plain_pipeline(tmp_path, capsys):
    from transformers import pipeline

    from mmtune.audio.io import load_audio
    from mmtune.cli import main

    assert main(["train", write_run(tmp_path)]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["normalizer"] == "whisper_english" and result["num_samples"] == 3 and "v0" in result["groups"]["voice"]
    final = tmp_path / "run" / "final"
    capsys.readouterr()
    wav = str(tmp_path / "audio" / "5.wav")
    assert main(["transcribe", "--checkpoint", str(final), wav, "--max-new-tokens", "6"]) == 0
    ours = capsys.readouterr().out.strip().split("\t", 1)[1]
    assert main(["export", "--checkpoint", str(final), "--out", str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    assert json.loads((exported / "generation_config.json").read_text())["language"] == "en"
    asr = pipeline("automatic-speech-recognition", model=str(exported))  # transformers alone
    theirs = asr(load_audio(wav, 16000), generate_kwargs={"num_beams": 1, "max_new_tokens": 6})["text"]
    assert theirs.strip() == ours


def test_language_column_of_a_manifest_reaches_the_decoder_prompt(padded, tmp_path):
    from mmtune.data.dataset import MultimodalDataset

    _, tokenizer = padded
    rows = [{"audio": Path(clip(tmp_path, "a", 0.4)).name, "text": "one"},
            {"audio": "a.wav", "text": "ek", "language": "hi"}, {"audio": "a.wav", "text": "x", "language": 7}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(max_length=32, num_workers=0, on_bad_sample="skip")
    cfg = whisper_config()
    dataset = MultimodalDataset.load(str(manifest), tokenizer, MediaSpec.from_config(cfg, data), data, progress=False)
    assert [dataset.example(k).input_ids[1].item() for k in range(len(dataset))] == [EN, HI]
    assert len(dataset.skipped) == 1 and "'language' must be a language code" in str(dataset.skipped[0])


def test_settings_a_whisper_model_cannot_take_are_refused(tmp_path, tokenizer_dir):
    from mmtune.config import Config

    with pytest.raises(ConfigError, match="a Whisper model takes padded batches"):
        from_dict(Config, {"model": {"whisper": {"config": TINY, "tokenizer": TOKENIZER}},
                           "data": {"batching": "packed"}})
    cfg = whisper_config()
    cfg.init_from = str(tmp_path)
    with pytest.raises(ConfigError, match="model.init_from: a Whisper model starts from model.whisper.path"):
        start_model(cfg)
    cfg = whisper_config()
    cfg.whisper.tokenizer = tokenizer_dir  # a ChatML BPE tokenizer: no Whisper special tokens
    with pytest.raises(ConfigError, match="has no <\\|startoftranscript\\|> token"):
        build_model(cfg)


def test_real_frame_input_decodes_greedily_only(tmp_path):
    from mmtune.infer.generate import generate

    cfg = whisper_config(encoder_input="real")
    model, tokenizer = build_model(cfg)
    prompt = encoder_for(cfg, tokenizer).prompt(asr_sample(clip(tmp_path, "a", 0.4), ""))
    with pytest.raises(ConfigError, match="beam search and sampling need model.whisper.encoder_input: padded"):
        generate(model, tokenizer, [prompt], max_new_tokens=3, num_beams=2)


def test_resume_continues_a_whisper_run_exactly(tmp_path):
    from mmtune.cli import main

    def losses(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    common = ["train.schedule=constant", "train.save_every=2", "data.eval=null", "data.augment.spec_augment=true",
              "data.augment.speed=[0.9,1.0,1.1]"]
    whole = write_run(tmp_path / "a")
    assert main(["train", whole, "max_steps=4", *common]) == 0
    halves = write_run(tmp_path / "b")
    assert main(["train", halves, "max_steps=2", *common]) == 0
    assert main(["train", halves, "max_steps=4", "resume=auto", *common]) == 0
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a), (a, b)


def test_data_check_with_a_whisper_config(tmp_path, capsys):
    from mmtune.cli import main

    cfg = write_run(tmp_path)
    assert main(["data", "check", str(tmp_path / "train.jsonl"), "--config", cfg]) == 0
    assert "train.jsonl: 8 rows, 8 good, 0 bad" in capsys.readouterr().out
