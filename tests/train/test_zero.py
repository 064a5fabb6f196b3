"""DeepSpeed ZeRO-2 and ZeRO-3 over two gloo processes on the CPU, launched with the shipped accelerate configs:
the losses and weights of one process accumulating the same global batch, whole weights a single process
loads, resume exact under the same engine and refused, with its reason, under another; mixed-modality
micro-batches (one process's has audio, the other's none) run without a hang."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmtune.config import ConfigError, load_config
from mmtune.model.checkpoint import load_checkpoint
from mmtune.train.loop import train
from tests.train.test_fsdp import COMMON, assert_same_losses
from tests.tiny import write_asr_run
from tests.train.test_mixed_processes import _losses, _mixed_run

pytest.importorskip("deepspeed")

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"


def launch(config: str, cfg: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmtune.cli", "train",
           cfg, *COMMON, *overrides]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=400)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


GENERATE = "eval.metrics=[loss,wer]"  # ZeRO-3: every process generates (each forward gathers the weights)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tokenizer_dir):
    """(config, output folder) of the one-process run both stages are compared with."""
    folder = tmp_path_factory.mktemp("zero_reference")
    cfg = write_asr_run(folder, tokenizer_dir, rows=16)
    train(load_config(cfg, COMMON + [GENERATE, "train.grad_accum=2", f"output_dir={folder / 'one'}"]))
    return cfg, folder / "one"


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_processes_matches_one_process_and_resumes_exactly(tmp_path, one_process, stage):
    cfg, one = one_process
    done = launch(f"zero{stage}.yaml", cfg, GENERATE, f"output_dir={tmp_path / 'two'}")
    assert f"DeepSpeed ZeRO-{stage} over 2 processes" in done.stderr
    held = re.search(r"keeps AdamW state for ([\d,]+) of ([\d,]+) trained values", done.stderr)
    assert held and 0.45 <= int(held[1].replace(",", "")) / int(held[2].replace(",", "")) <= 0.55  # half each
    assert_same_losses(_losses(one), _losses(tmp_path / "two"))
    first = [json.loads((run / "predictions.jsonl").read_text().splitlines()[0]) for run in (one, tmp_path / "two")]
    assert first[0]["prediction"] == first[1]["prediction"]
    assert json.loads((tmp_path / "two/eval.json").read_text())["wer"] == pytest.approx(
        json.loads((one / "eval.json").read_text())["wer"])
    a = load_file(str(one / "final/model.safetensors"))
    b = load_file(str(tmp_path / "two/final/model.safetensors"))
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    load_checkpoint(tmp_path / "two" / "final")  # whole weights: a single process loads them
    assert (tmp_path / "two/checkpoint-2/deepspeed").is_dir()
    assert not list(tmp_path.glob("two/.engine-*"))  # the staging folders went into the checkpoints
    if stage == 2:  # the suite's time: resume is run under ZeRO-3, whose partitions are the harder case
        return
    folder = tmp_path / "resume"
    shutil.copytree(tmp_path / "two", folder, ignore=shutil.ignore_patterns("checkpoint-4", "final"))
    launch(f"zero{stage}.yaml", cfg, f"output_dir={folder}", "train.resume=auto")
    assert_same_losses(_losses(tmp_path / "two"), _losses(folder))
    # another engine cannot take DeepSpeed's optimizer partitions: refused before any step, saying why
    shutil.rmtree(folder / "checkpoint-4")
    shutil.rmtree(folder / "final")
    with pytest.raises(Exception, match=f"written by DeepSpeed ZeRO-{stage} on 2 processes"):
        train(load_config(cfg, COMMON + [GENERATE, f"output_dir={folder}", "train.resume=auto"]))


def test_zero3_with_mixed_modality_batches_runs_without_a_hang(tmp_path, tokenizer_dir):
    """Every process runs every tower (an idle one on a dummy input), so ZeRO-3's gathers line up. ZeRO keeps
    gradients in buffers of its own: a tower idle on every process in a step gets a zero gradient, which
    AdamW's moments and weight decay still act on, where one process gives it none (and DDP and FSDP skip
    it alike), so the losses part from one process's once that happens: 2e-4 at step 3 here (measured)."""
    cfg = _mixed_run(tmp_path, tokenizer_dir)
    train(load_config(cfg, COMMON + ["train.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    launch("zero3.yaml", cfg, f"output_dir={tmp_path / 'two'}")
    assert_same_losses(_losses(tmp_path / "one"), _losses(tmp_path / "two"), tolerance=1e-3)


def _accelerator(config: dict, processes: int = 2):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(deepspeed_config=config, zero_stage=config.get("zero_optimization", {}).get("stage"))
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def test_mmtunes_settings_go_into_the_deepspeed_config(tmp_path, tokenizer_dir):
    from mmtune.train.engine import Engine

    cfg = load_config(write_asr_run(tmp_path, tokenizer_dir), ["train.grad_accum=3", "train.max_grad_norm=0.5"])
    config = {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": "auto"}
    engine = Engine.choose(cfg, _accelerator(config), "no")
    assert engine.name == "zero3" and engine.every_process_evaluates and engine.record == {"name": "zero3",
                                                                                            "processes": 2}
    assert config["gradient_accumulation_steps"] == 3 and config["gradient_clipping"] == 0.5
    assert config["train_micro_batch_size_per_gpu"] == 1 and config["train_batch_size"] == 6


@pytest.mark.parametrize("config,overrides,says", [
    ({"zero_optimization": {"stage": 1}}, [], "ZeRO-2 and ZeRO-3"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, [], "optimizer section"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, [], "offload_param"),
    ({"zero_optimization": {"stage": 2}}, ["model.llm.train=hft"], "hft"),
    ({"zero_optimization": {"stage": 2}}, ["train.fsdp=true"], "choose one"),
], ids=["zero1", "optimizer", "offload", "hft", "fsdp"])
def test_what_deepspeed_cannot_run_is_refused_by_name(tmp_path, tokenizer_dir, config, overrides, says):
    from mmtune.train.engine import Engine

    cfg = load_config(write_asr_run(tmp_path, tokenizer_dir), overrides)
    with pytest.raises(ConfigError, match=says):
        Engine.choose(cfg, _accelerator(config), "no")
