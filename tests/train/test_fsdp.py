"""FSDP2 over two gloo processes on the CPU (`train.fsdp: true`, or the shipped accelerate config): the losses of one process accumulating the
same global batch, with mixed-modality micro-batches (one process's has audio, the other's none), a tower
trained and frozen; checkpoints a single process loads; resume exact, under FSDP and under DDP."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmtune.config import load_config
from mmtune.model.checkpoint import load_checkpoint
from mmtune.train.loop import train
from tests.train.test_mixed_processes import _losses, _mixed_run

COMMON = ["max_steps=4", "eval.metrics=[loss]", "data.batch_size=1", "data.group_by_length=false",
          "train.save_every=2"]


CONFIG = Path(__file__).resolve().parents[2] / "accelerate_configs" / "fsdp2.yaml"


def two_processes(cfg: str, *overrides: str, fsdp: bool = True, config_file: bool = False) -> str:
    """Two gloo processes: DDP with train.fsdp=true|false, or (config_file) the shipped FSDP accelerate config."""
    launcher = ["--config_file", str(CONFIG)] if config_file else ["--multi_gpu", "--num_machines", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "mmtune.cli", "train", cfg, *COMMON, *([] if config_file else [f"train.fsdp={str(fsdp).lower()}"]),
           *overrides]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def assert_same_losses(one: dict, two: dict, steps=(1, 2, 3, 4), tolerance: float = 1e-5) -> None:
    assert sorted(one) == sorted(two) == list(steps)
    for step in one:
        assert abs(one[step] - two[step]) < tolerance, (step, one[step], two[step])


def test_fsdp_on_two_processes_matches_one_process_and_resumes_exactly(tmp_path, tokenizer_dir):
    cfg = _mixed_run(tmp_path, tokenizer_dir)
    train(load_config(cfg, COMMON + ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    log = two_processes(cfg, f"output_dir={tmp_path / 'two'}", config_file=True)  # the shipped config selects FSDP2
    held = re.search(r"FSDP: (\d+) units over 2 processes; this process holds [\d,]+ of [\d,]+ parameter values "
                     r"\((\d+)%\)", log)
    assert held and int(held.group(1)) > 4 and 45 <= int(held.group(2)) <= 60  # sharded: about half each
    assert_same_losses(_losses(tmp_path / "one"), _losses(tmp_path / "two"))
    # the checkpoint is what one process writes: the same tensors, and a single process loads it
    a = load_file(str(tmp_path / "one/final/model.safetensors"))
    b = load_file(str(tmp_path / "two/final/model.safetensors"))
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    a = load_file(str(tmp_path / "one/checkpoint-2/optimizer.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoint-2/optimizer.safetensors"))
    assert set(a) == set(b) and max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-6
    load_checkpoint(tmp_path / "two" / "final")
    # resume from checkpoint-2, under FSDP and under DDP (the checkpoint does not depend on the engine)
    for fsdp in (True, False):
        folder = tmp_path / f"resume_{'fsdp' if fsdp else 'ddp'}"
        shutil.copytree(tmp_path / "two", folder, ignore=shutil.ignore_patterns("checkpoint-4", "final"))
        two_processes(cfg, f"output_dir={folder}", "train.resume=auto", fsdp=fsdp)
        assert_same_losses(_losses(tmp_path / "two"), _losses(folder))


# LoRA: two DDP processes differ from one process by 2.4e-5 at step 3 (of a 5.75 loss; Adam's first steps
# scale rounding up where B starts at 0), and FSDP gives DDP's losses to the last digit (measured)
@pytest.mark.parametrize("plan,tolerance", [("model.audio.train=frozen", 1e-5), ("model.llm.train=lora", 1e-4)],
                         ids=["frozen-tower", "lora-llm"])
def test_fsdp_with_frozen_parts_and_mixed_batches_matches_one_process(tmp_path, tokenizer_dir, plan, tolerance):
    """A frozen tower (in the root unit) and LoRA on a frozen LLM (frozen and trained parameters in one unit)."""
    cfg = _mixed_run(tmp_path, tokenizer_dir)
    train(load_config(cfg, COMMON + [plan, "train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    two_processes(cfg, plan, f"output_dir={tmp_path / 'two'}")
    assert_same_losses(_losses(tmp_path / "one"), _losses(tmp_path / "two"), tolerance=tolerance)
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["loss"] == pytest.approx(
        json.loads((tmp_path / "one" / "eval.json").read_text())["loss"], abs=1e-5)


def test_fsdp_on_one_process_trains_unsharded(tmp_path, tokenizer_dir):
    cfg = _mixed_run(tmp_path, tokenizer_dir)
    train(load_config(cfg, COMMON + ["max_steps=2", f"output_dir={tmp_path / 'plain'}"]))
    train(load_config(cfg, COMMON + ["max_steps=2", "train.fsdp=true", f"output_dir={tmp_path / 'fsdp'}"]))
    assert_same_losses(_losses(tmp_path / "plain"), _losses(tmp_path / "fsdp"), steps=(1, 2))


def test_the_shipped_accelerate_fsdp_config_parses_as_fsdp2():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIG))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
