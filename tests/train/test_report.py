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
