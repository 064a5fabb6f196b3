import json
import time

import pytest

from tests.train.fake_run import run_steps, step_values
from mmtune.train.tracker import Tracker, format_progress, read_records, write_atomic


def test_lines_written_and_read_back(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(1, loss=2.5, lr=1e-4)
        tracker.log(2, loss=2.0, lr=2e-4)
        history = tracker.history()  # readable while the run is open: every line is flushed
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {"step", "loss", "lr", "time"}
    assert (first["step"], first["loss"], first["lr"]) == (1, 2.5, 1e-4)
    assert first["time"] > 1.6e9  # unix seconds
    assert [(r["step"], r["loss"]) for r in history] == [(1, 2.5), (2, 2.0)]
    assert tracker.history() == history  # also after close


def test_tensor_values_are_written_as_numbers(tmp_path):
    torch = pytest.importorskip("torch")
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(3, loss=torch.tensor(1.25))
    assert read_records(tmp_path / "metrics.jsonl")[0]["loss"] == 1.25


def test_eval_keys_are_prefixed(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log_eval(10, {"loss": 1.5, "wer": 0.25, "eval_cer": 0.1})
        (record,) = tracker.history()
    assert record["step"] == 10
    assert {k: record[k] for k in ("eval_loss", "eval_wer", "eval_cer")} == {"eval_loss": 1.5, "eval_wer": 0.25,
                                                                               "eval_cer": 0.1}
    assert "loss" not in record and "wer" not in record


def test_resume_truncates_to_an_uninterrupted_run(tmp_path):
    with Tracker(tmp_path / "straight", tensorboard=False) as tracker:
        run_steps(tracker, range(1, 11))
        expected = step_values(tracker.history())

    resumed = tmp_path / "resumed"
    with Tracker(resumed, tensorboard=False) as tracker:
        run_steps(tracker, range(1, 11))  # killed after step 10; last checkpoint at step 6
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "loss": 0.0')  # a line torn by the kill
    with Tracker(resumed, resume_step=6, tensorboard=False) as tracker:
        assert [r["step"] for r in tracker.history()] == [1, 2, 3, 4, 5, 5, 6]
        run_steps(tracker, range(7, 11))
        assert step_values(tracker.history()) == expected
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == len(expected)


def test_fresh_run_starts_an_empty_file(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        run_steps(tracker, range(1, 4))
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(1, loss=9.0)
        assert [(r["step"], r["loss"]) for r in tracker.history()] == [(1, 9.0)]


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    with Tracker(tmp_path) as tracker:
        tracker.log(1, loss=2.0, lr=1e-4)
        tracker.log_eval(1, {"wer": 0.5})
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr", "eval_wer"}
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval_wer")] == [(1, 0.5)]


def test_tensorboard_hides_the_redone_steps_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    with Tracker(tmp_path) as tracker:
        for step in range(1, 6):
            tracker.log(step, loss=float(step))
    time.sleep(1.1)  # event files are named by the second; a resumed run is always later than its first part
    with Tracker(tmp_path, resume_step=3) as tracker:
        for step in range(4, 6):
            tracker.log(step, loss=step + 100.0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0)]


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_format_progress():
    assert format_progress(2.31415, 1e-4, 12_345) == {"loss": "2.314", "lr": "1.0e-04", "tok/s": "12.3k"}
    assert format_progress(0.5, 3e-5, 812)["tok/s"] == "812"
    assert format_progress(0.5, 3e-5, 2.5e6)["tok/s"] == "2.5M"
