"""The training loop as a user runs it: the CLI on files, checkpoints on disk, resume, accumulation."""

import json

import pytest
import torch

from mmtune.cli import main
from mmtune.config import load_config
from mmtune.model.checkpoint import load_checkpoint
from mmtune.train.loop import TrainingError, train
from tests.train.fake_run import train_killed_at
from tests.tiny import write_asr_run


def _losses(out_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_cli_run_writes_everything_a_user_looks_at(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert main(["train", cfg, "max_steps=2"]) == 0
    out = tmp_path / "run"
    assert sorted(_losses(out)) == [1, 2]
    metrics = json.loads((out / "eval.json").read_text())
    assert {"loss", "wer"} <= set(metrics) and 0.0 <= metrics["wer"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "WER" in (out / "report.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    model, _, _ = load_checkpoint(out / "final")
    assert not model.training


def test_unknown_key_fails_with_a_close_match(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert main(["train", cfg, "train.learning_rate=1e-3"]) == 1
    assert "unknown key 'train.learning_rate'" in capsys.readouterr().err


def test_resume_after_a_kill_logs_the_same_losses(tmp_path, tokenizer_dir, monkeypatch):
    whole = write_asr_run(tmp_path / "a", tokenizer_dir)
    killed = write_asr_run(tmp_path / "b", tokenizer_dir)
    # every augmentation on, drawn in 2 worker processes: each draw derives from (seed, epoch, row), so the
    # resumed run draws what the uninterrupted one drew (16 rows of 4: an epoch is 4 steps, so the kill
    # at step 5 falls in the second epoch)
    # and attention dropout draws from torch's global RNG, which the data loaders must leave alone
    overrides = ["train.save_every=3", "data.augment.spec_augment=true", "data.augment.time_mask=5",
                 "data.augment.speed=[0.9,1.0,1.1]", "data.augment.noise_snr_db=[10,30]", "data.augment.noise_p=0.5",
                 "data.augment.reverb_p=0.5", "data.augment.band_limit_p=0.5", "data.num_workers=2",
                 "model.llm.config.attention_dropout=0.2"]
    train(load_config(whole, overrides))

    train_killed_at(monkeypatch, 5, lambda: train(load_config(killed, overrides)))
    assert (tmp_path / "b" / "run" / "checkpoint-3").is_dir()
    train(load_config(killed, overrides + ["resume=auto"]))
    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


def test_accumulation_averages_over_all_supervised_tokens(tmp_path, tokenizer_dir):
    """4 samples x 2 micro-batches == 8 samples in one batch: same loss, same weights after a step."""
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    results = {}
    for name, over in {"accum": ["data.batch_size=4", "train.grad_accum=2"],
                       "big": ["data.batch_size=8", "train.grad_accum=1"]}.items():
        out = tmp_path / name
        train(load_config(cfg, over + ["max_steps=2", f"output_dir={out}", "eval.metrics=[loss]"]))
        model, _, _ = load_checkpoint(out / "final")
        results[name] = (_losses(out), dict(model.state_dict()))
    (la, wa), (lb, wb) = results["accum"], results["big"]
    assert abs(la[1] - lb[1]) < 1e-6 and abs(la[2] - lb[2]) < 1e-5
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=0)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, tokenizer_dir, monkeypatch):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    from mmtune.model.bridge import MultimodalLM

    real_forward = MultimodalLM.forward
    calls = {"n": 0}

    def nan_at_third_step(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3 and out.loss_sum is not None:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    monkeypatch.setattr(MultimodalLM, "forward", nan_at_third_step)
    with pytest.raises(TrainingError, match=r"the loss is nan at step 3; .*checkpoint-2"):
        train(load_config(cfg, ["train.save_every=2"]))
    assert (tmp_path / "run" / "checkpoint-2" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def test_a_log_written_to_a_file_reads_top_to_bottom(tmp_path, tokenizer_dir):
    """`mmtune train ... 2> train.log`: each start-up line once, progress as whole lines, no redraws."""
    import os
    import subprocess
    import sys

    cfg = write_asr_run(tmp_path, tokenizer_dir)
    log = tmp_path / "train.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "mmtune.cli", "train", cfg, "max_steps=3", "eval.metrics=[loss]"],
                              stdout=subprocess.DEVNULL, stderr=f, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text
    assert text.count("trainable:") == 1
    lines = text.splitlines()
    assert any(line.startswith("train 3/3 [") and "loss=" in line for line in lines)
    assert len(lines) < 30


def test_a_run_whose_every_row_fails_when_decoded_stops_with_an_error(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir, rows=4)
    for wav in (tmp_path / "audio").glob("*.wav"):  # headers intact, samples NaN: only decoding finds it
        import numpy as np
        import soundfile as sf

        wave, rate = sf.read(wav, dtype="float32")
        wave[5] = np.nan
        sf.write(wav, wave, rate, subtype="FLOAT")
    assert main(["train", cfg, "max_steps=2", "data.on_bad_sample=skip", "data.eval=null"]) == 1
    assert "every row fails when decoded (4 skipped" in capsys.readouterr().err
