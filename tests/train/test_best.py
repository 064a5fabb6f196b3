"""Epochs, the best checkpoint, early stopping and final/ as a user meets them: files on disk after a run.

The held-out metric is scripted per step (the real evaluation runs; its loss is replaced), so which
checkpoint is best is known in advance."""

import json

import pytest
import torch

from mmtune.config import ConfigError, load_config
from mmtune.data.stream import steps_for_epochs
from mmtune.model.checkpoint import read_weights
from mmtune.train import loop
from mmtune.train.best import Best
from mmtune.train.loop import train
from tests.train.fake_run import train_killed_at
from tests.tiny import write_asr_run

FAST = ["eval.metrics=[loss]", "train.best_metric=loss", "data.num_workers=0"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _script_eval_loss(monkeypatch, by_step: dict):
    """The run's evaluation at step s reports eval loss by_step[s] (everything else as measured)."""
    real = loop._Run.measure
    current = {}

    def scripted(self):
        metrics, records = real(self)
        return {**metrics, "loss": by_step[current["step"]]}, records

    real_evaluate = loop._Run.evaluate

    def evaluate(self, step, tracker):
        current["step"] = step
        return real_evaluate(self, step, tracker)

    monkeypatch.setattr(loop._Run, "measure", scripted)
    monkeypatch.setattr(loop._Run, "evaluate", evaluate)


def _same_weights(a, b) -> bool:
    wa, wb = read_weights(a / "model.safetensors"), read_weights(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_epochs_become_steps_from_the_plan():
    assert steps_for_epochs([10, 11, 10], 2.5, per_step=2) == 13  # (10 + 11 + 5) // 2
    assert steps_for_epochs([4, 4], 1, per_step=8) == 1  # never 0
    assert steps_for_epochs([4, 4], 2, per_step=1) == 8


def test_a_run_of_epochs_ends_on_the_epoch_and_reports_it(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)  # 16 rows, batch_size 4: 4 micro-batches an epoch
    train(load_config(cfg, ["max_steps=null", "epochs=1.5", "train.grad_accum=2", "eval.metrics=[loss]"]))
    out = tmp_path / "run"
    assert [r["step"] for r in _records(out) if "loss" in r][-1] == 3  # 6 micro-batches, 2 a step
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["stream"] == {"epoch": 1, "index": 2}  # half of the second epoch
    assert state["scheduler"]["last_epoch"] == 3  # the schedule ran over the 3 steps, not max_steps' 100
    assert "- epochs: 1.50" in (out / "report.md").read_text()


def test_the_best_checkpoint_survives_pruning_and_final_holds_it(tmp_path, tokenizer_dir, monkeypatch):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    _script_eval_loss(monkeypatch, {2: 5.0, 4: 3.0, 6: 4.0})
    train(load_config(cfg, FAST + ["train.eval_every=2", "train.save_every=1", "train.keep_last=1"]))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert _same_weights(out / "final", out / "checkpoint-4")
    assert not _same_weights(out / "final", out / "checkpoint-6")
    result = json.loads((out / "eval.json").read_text())
    assert result["loss"] == 3.0 and result["step"] == 4 and result["final"] == "best"
    assert result["best"] == {"metric": "loss", "value": 3.0, "step": 4, "checkpoint": "checkpoint-4"}
    report = (out / "report.md").read_text()
    assert "- best checkpoint: `checkpoint-4` (loss 3 at step 4)" in report
    assert "- final/ holds: the best weights (step 4)" in report
    assert "Held-out loss was 3 at step 4 and is 4 at the end (step 6); final/ holds the best weights." in report


def test_final_can_be_the_last_weights(tmp_path, tokenizer_dir, monkeypatch):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    _script_eval_loss(monkeypatch, {2: 5.0, 4: 3.0, 6: 4.0})
    train(load_config(cfg, FAST + ["train.eval_every=2", "train.keep_last=1", "train.final=last"]))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert _same_weights(out / "final", out / "checkpoint-6")
    result = json.loads((out / "eval.json").read_text())
    assert result["loss"] == 4.0 and result["step"] == 6 and result["final"] == "last"
    assert result["best"]["step"] == 4


def test_early_stopping_stops_after_patience_evaluations_and_keeps_the_best(tmp_path, tokenizer_dir, monkeypatch):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    _script_eval_loss(monkeypatch, {1: 5.0, 2: 4.0, 3: 4.0, 4: 4.5})  # equal is not better: steps 3, 4 wait
    train(load_config(cfg, FAST + ["max_steps=10", "train.eval_every=1", "train.early_stopping_patience=2",
                                   "train.keep_last=1"]))
    out = tmp_path / "run"
    assert max(r["step"] for r in _records(out)) == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert _same_weights(out / "final", out / "checkpoint-2")
    assert "- stopped: early stopping at step 4: loss did not improve in 2 evaluations after step 2" in \
        (out / "report.md").read_text()


def test_resume_continues_the_best_and_the_wait(tmp_path, tokenizer_dir, monkeypatch):
    losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 3.5, 5: 2.0, 6: 2.5}
    over = FAST + ["train.eval_every=1", "train.save_every=1", "train.keep_last=1"]
    whole = write_asr_run(tmp_path / "a", tokenizer_dir)
    killed = write_asr_run(tmp_path / "b", tokenizer_dir)
    _script_eval_loss(monkeypatch, losses)
    train(load_config(whole, over))
    train_killed_at(monkeypatch, 4, lambda: train(load_config(killed, over)))
    b = tmp_path / "b" / "run"
    state = json.loads((b / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best"] == {"metric": "loss", "patience": None, "value": 3.0, "step": 2,
                             "checkpoint": "checkpoint-2", "waited": 1}
    train(load_config(killed, over + ["resume=auto"]))
    a = tmp_path / "a" / "run"
    assert json.loads((a / "eval.json").read_text())["best"] == json.loads((b / "eval.json").read_text())["best"] \
        == {"metric": "loss", "value": 2.0, "step": 5, "checkpoint": "checkpoint-5"}
    assert sorted(p.name for p in b.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    assert _same_weights(a / "final", b / "final")


def test_best_compares_in_the_metric_direction():
    wer = Best("wer", patience=2)
    assert wer.update(1, {"wer": 0.5}) and not wer.update(2, {"wer": 0.5}) and wer.update(3, {"wer": 0.4})
    assert not wer.update(4, {"wer": float("nan")}) and not wer.update(5, {"wer": 0.6}) and wer.exhausted
    accuracy = Best("accuracy")
    assert accuracy.update(1, {"accuracy": 0.5}) and accuracy.update(2, {"accuracy": 0.7})
    assert not accuracy.update(3, {"accuracy": 0.6}) and not accuracy.exhausted  # no patience: never stops


def test_an_override_of_the_run_length_replaces_the_files_other(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)  # the file says max_steps: 6
    length = load_config(cfg, ["epochs=2"]).train
    assert (length.epochs, length.max_steps) == (2.0, None)
    (tmp_path / "epochs.yaml").write_text((tmp_path / "config.yaml").read_text().replace("max_steps: 6", "epochs: 3"))
    assert load_config(tmp_path / "epochs.yaml", ["max_steps=2"]).train.epochs is None  # a smoke test of it


@pytest.mark.parametrize("overrides, message", [
    (["epochs=2", "max_steps=3"], "epochs and max_steps are both set"),
    (["max_steps=null", "epochs=0"], "epochs: must be > 0"),
    (["train.best_metric=wer", "eval.metrics=[loss]"], "'wer' is not measured; add it to eval.metrics"),
    (["train.best_metric=bleu"], "best_metric: 'bleu' is not one of"),
    (["train.best_metric=loss", "train.early_stopping_patience=2"], "needs best_metric .* and eval_every > 0"),
    (["train.final=best"], "final: best needs best_metric"),
])
def test_run_length_and_best_settings_are_checked_when_read(tmp_path, tokenizer_dir, overrides, message):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, overrides)
