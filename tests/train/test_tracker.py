import json
import math
import struct
import time

import pytest
from PIL import Image

from mmtune.train.tracker import (Tracker, format_progress, plot_curves, read_records, smooth, write_eval_json,
                                  write_report)

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


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    with Tracker(folder, tensorboard=False) as tracker:
        run_steps(tracker, range(1, 31))
        return tracker.history()


def test_plot_is_a_sensible_png(tmp_path, records):
    path = plot_curves(records, tmp_path / "sub" / "curves.png")
    width, height = png_size(path)
    assert 600 <= width <= 2000 and 400 <= height <= 2000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (width, height)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 50  # drawn, not a blank canvas


def test_plot_without_eval_or_lr_or_anything(tmp_path):
    loss_only = plot_curves([{"step": s, "loss": 1.0 / s} for s in range(1, 5)], tmp_path / "a.png")
    empty = plot_curves([], tmp_path / "b.png")
    assert png_size(loss_only)[1] < png_size(plot_curves([{"step": 1, "loss": 1.0, "lr": 1e-4, "eval_loss": 1.0}],
                                                         tmp_path / "c.png"))[1]
    assert png_size(empty)[0] > 0


def test_smooth_is_centered_and_keeps_the_ends():
    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.0, 2.0, 3.0, 4.0, 5.0]  # a line stays a line: no lag
    assert smooth([0.0, 3.0, 0.0, 3.0, 0.0], 3) == [0.0, 1.0, 2.0, 1.0, 0.0]


def test_report_has_metrics_plot_data_and_command(tmp_path, records):
    config = {"model": {"llm": {"config": {"model_type": "qwen2"}, "train": "lora"},
                        "audio": {"path": "openai/whisper-tiny", "train": "frozen",
                                  "projector": {"type": "stack", "stack": 4, "frozen": False}},
                        "vision": None, "lora": {"r": 8, "alpha": 16}},
              "data": {"train": "train.jsonl", "eval": "data/eval.jsonl"}, "train": {"max_steps": 30}}
    stats = {"rows": 95, "skipped": 2, "skipped_by_reason": {"too long": 2}, "tokens": 5000,
             "supervised_fraction": 0.25}
    path = write_report(tmp_path, config, {"loss": 0.5, "wer": 0.1234, "cer": 0.05}, records,
                        extra={"train_data": stats, "eval_data": None, "train_seconds": 125.0})
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "| WER | 12.34% |" in text and "| CER | 5.00% |" in text and "| loss | 0.5 |" in text
    assert "![curves](curves.png)" in text and png_size(tmp_path / "curves.png")[0] > 0
    assert "qwen2" in text and "lora (r=8, alpha=16)" in text and "`openai/whisper-tiny`" in text
    assert "steps: 30" in text and "2m 05s" in text and "1.0k tokens/s" in text
    assert "| | train |" in text and "| rows kept | 95 |" in text and "too long: 2" in text and "| supervised token fraction | 25.0% |" in text
    assert f"| 1 | {fake_loss(1):.4f} |" in text and f"| 30 | {fake_loss(30):.4f} |" in text
    assert f"mmtune eval --checkpoint {tmp_path / 'final'} --data data/eval.jsonl" in text


def test_eval_json_round_trips_atomically(tmp_path):
    metrics = {"loss": 0.5, "wer": 0.1234, "samples": 64}
    path = write_eval_json(tmp_path, metrics)
    assert path == tmp_path / "eval.json"
    assert json.loads(path.read_text()) == metrics
    assert "\n  " in path.read_text()  # indented for people
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left behind


def test_format_progress():
    assert format_progress(2.31415, 1e-4, 12_345) == {"loss": "2.314", "lr": "1.0e-04", "tok/s": "12.3k"}
    assert format_progress(0.5, 3e-5, 812)["tok/s"] == "812"
    assert format_progress(0.5, 3e-5, 2.5e6)["tok/s"] == "2.5M"
