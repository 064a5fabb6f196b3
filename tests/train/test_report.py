import json

import pytest

from tests.train.fake_run import fake_loss, fake_records, png_size
from mmtune.train.report import write_eval_json, write_report


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return fake_records(tmp_path_factory.mktemp("run"))


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


def _loss_records(train_losses, evals):
    """metrics.jsonl-like records: training loss per step, and {step: {metric: value}} evaluations."""
    records = [{"step": s, "loss": v, "lr": 1e-3, "time": float(s)} for s, v in enumerate(train_losses, start=1)]
    return records + [{"step": s, **{f"eval_{k}": v for k, v in m.items()}, "time": float(s)} for s, m in evals.items()]


def test_report_says_what_to_notice(tmp_path):
    """The speech example's pattern: training loss near 0, held-out loss far above, WER worse at the end,
    one voice far behind, rows skipped."""
    records = _loss_records([2.0] * 10 + [0.0012] * 10, {1000: {"loss": 0.15, "wer": 0.041},
                                                         2000: {"loss": 0.217, "wer": 0.055}})
    final = {"loss": 0.217, "wer": 0.055, "groups": {"voice": {"en-029": {"num_samples": 50, "wer": 0.12},
                                                               "en+f4": {"num_samples": 50, "wer": 0.01}}}}
    stats = {"rows": 98, "skipped": 2, "skipped_by_reason": {"cannot decode audio <file>": 2}}
    text = write_report(tmp_path, {"train": {}}, final, records, extra={"train_data": stats}).read_text()
    notice = text.split("## What to notice")[1].split("## Run")[0]
    assert "The held-out loss (0.217) is 181x the training loss at the end (0.0012)" in notice
    assert "Held-out WER was 4.10% at step 1000 and is 5.50% at the end (step 2000); train.best_metric: wer keeps " \
           "the best checkpoint." in notice
    assert "Held-out loss was 0.15 at step 1000 and is 0.217 at the end" in notice
    assert "2 of 100 train rows were skipped (cannot decode audio <file>: 2)" in notice
    assert "WER for voice en-029 is 12.00%, against 5.50% over all held-out rows." in notice
    assert "### By voice" in text and "| en-029 | 50 | 12.00% |" in text and "| en+f4 | 50 | 1.00% |" in text


def test_a_healthy_run_has_nothing_to_notice(tmp_path):
    records = _loss_records([2.0, 1.0, 0.5, 0.3], {2: {"loss": 0.6, "accuracy": 0.7}, 4: {"loss": 0.4, "accuracy": 0.8}})
    text = write_report(tmp_path, {}, {"loss": 0.4, "accuracy": 0.8}, records, extra={}).read_text()
    assert "What to notice" not in text
