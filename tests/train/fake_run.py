"""A made-up run's records for the tracker, curves and report tests."""

import math
import struct

from mmtune.train.tracker import Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_loss(step: int) -> float:
    return 6.0 * math.exp(-step / 3) + 0.01


def run_steps(tracker: Tracker, steps) -> None:
    for step in steps:
        tracker.log(step, loss=fake_loss(step), lr=1e-4 / step, tokens_per_s=1000.0 + step)
        if step % 5 == 0:
            tracker.log_eval(step, {"loss": fake_loss(step) + 0.1, "wer": 0.5 / step})


def step_values(records):
    return [(r["step"], r.get("loss"), r.get("eval_loss"), r.get("eval_wer")) for r in records]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def fake_records(folder) -> list[dict]:
    """30 steps of loss, lr and speed, with an eval every 5 steps, as metrics.jsonl holds them."""
    with Tracker(folder, tensorboard=False) as tracker:
        run_steps(tracker, range(1, 31))
        return tracker.history()


def train_killed_at(monkeypatch, step: int, run) -> None:
    """Call `run()` (a training run) with a KeyboardInterrupt raised when it reaches optimizer step `step`,
    as a kill would stop it; checkpoints written before that step stay on disk."""
    import pytest

    from mmtune.train import loop

    real_step = loop._Run.train_step

    def dies(self, s):
        if s == step:
            raise KeyboardInterrupt
        return real_step(self, s)

    monkeypatch.setattr(loop._Run, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(loop._Run, "train_step", real_step)
