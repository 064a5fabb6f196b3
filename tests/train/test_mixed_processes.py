"""Two processes (DDP over gloo on the CPU: `accelerate launch --multi_gpu --num_processes 2`, which mmtune's
Accelerator joins over gloo without CUDA) with mixed-modality micro-batches: one process's batch has audio
while the other's has none. No hang, no unused-parameter error, and the losses of one process accumulating
the same global batch, with the audio tower trained and frozen; a mid-run evaluation and best checkpoint
decided alike on both processes."""

import json
import os
import subprocess
import sys

import pytest

from mmtune.config import load_config
from mmtune.train.loop import train
from tests.tiny import DIGITS, write_asr_run


def _losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _mixed_run(folder, tokenizer_dir) -> str:
    """16 rows, audio and text-only in turn: with 1 row a micro-batch, processes see different modalities."""
    cfg = write_asr_run(folder, tokenizer_dir, rows=8)
    speech = (folder / "train.jsonl").read_text().splitlines()
    text = [json.dumps({"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]})
            for w in DIGITS[:8]]
    (folder / "train.jsonl").write_text("\n".join(x for pair in zip(speech, text) for x in pair) + "\n")
    return cfg


@pytest.mark.parametrize("tower", ["full", "frozen"])
def test_mixed_modality_batches_on_two_processes_match_one_process(tmp_path, tokenizer_dir, tower):
    cfg = _mixed_run(tmp_path, tokenizer_dir)
    common = ["max_steps=4", "eval.metrics=[loss]", "data.batch_size=1", "data.group_by_length=false",
              f"model.audio.train={tower}"]
    train(load_config(cfg, common + ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmtune.cli", "train",
           cfg, *common, "train.grad_accum=1", f"output_dir={tmp_path / 'two'}",
           # an evaluation in the middle with a best checkpoint: process 0 measures, both decide and save alike
           "train.eval_every=2", "train.best_metric=loss"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    assert done.stderr.count("trainable:") == 1  # start-up lines come from process 0 only
    best = json.loads((tmp_path / "two" / "eval.json").read_text())["best"]["checkpoint"]
    assert best in ("checkpoint-2", "checkpoint-4") and (tmp_path / "two" / best).is_dir()


def test_a_run_the_main_process_refuses_stops_every_process_with_its_message(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    train(load_config(cfg, ["max_steps=1", "eval.metrics=[loss]"]))  # the folder now holds a finished run
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmtune.cli", "train",
           cfg, "max_steps=1"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # every process raises the broadcast refusal; the launcher may stop the second before it prints it
    assert 1 <= len(errors) <= 2 and all("holds another run" in e for e in errors), done.stderr[-2000:]
    # the launcher prints its own summary of the failed children; no traceback runs through mmtune's code
    assert not [line for line in done.stderr.splitlines() if 'File "' in line and "/mmtune/" in line]
