"""DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch --config_file accelerate_configs/zero2.yaml`.

Accelerate builds the DeepSpeed engine (`accelerator.prepare(model, optimizer)`); mmtune's AdamW, its
parameter groups and its schedule stay mmtune's (ZeRO partitions the AdamW state across processes;
the schedule sets the same group dicts). mmtune's settings are the source of three DeepSpeed ones,
written into the engine's config before it is built:

    train_micro_batch_size_per_gpu   1 (mmtune's micro-batches are token budgets, not row counts;
                                      DeepSpeed uses the number only in its throughput logs)
    gradient_accumulation_steps      train.grad_accum
    gradient_clipping                train.max_grad_norm (0: none)

A step: every micro-batch runs `engine.backward(loss)` (unscaled: the loop's loss is already the
step's global token mean) and `engine.step()`, which steps the optimizer on the last micro-batch of
the step only. ZeRO keeps gradients in buffers of its own, so a tower that saw no input anywhere in a
step gets a zero gradient (Adam's moments still move it) where DDP and FSDP give it none.

Under ZeRO-3 each parameter lives in shards: weights are gathered one module at a time to be saved
(`full_state`, a collective) and written back the same way (`load_full`), and every process runs
each evaluation (a forward gathers the parameters, a collective). Checkpoints hold the whole weights
(`model.safetensors`, what one process loads) and DeepSpeed's own per-process optimizer partitions
in `deepspeed/` (`save_engine`), so a resume needs the same ZeRO stage and process count
(`mmtune.train.engine.Engine.check_resume` refuses another).

On a machine without CUDA, accelerate joins the processes over gloo when the Accelerator gets
`accelerator_options()` (DeepSpeed runs its CPU accelerator there; tests/train/test_zero.py).
"""

import importlib.util
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from mmtune.config import ConfigError, TrainConfig

log = logging.getLogger("mmtune")

ENGINE_DIR = "deepspeed"  # in a checkpoint folder: DeepSpeed's optimizer partitions, one file per process
TAG = "state"  # DeepSpeed's checkpoint tag inside ENGINE_DIR
MMTUNE_BUILDS = ("optimizer", "scheduler")  # DeepSpeed config sections that would replace mmtune's own


def requested() -> bool:
    """`accelerate launch` with a DeepSpeed config (it sets ACCELERATE_USE_DEEPSPEED for every process)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options() -> dict:
    """Accelerator keyword arguments for the launch: without CUDA, DeepSpeed joins the processes over gloo
    (accelerate's cpu=True would turn DeepSpeed off)."""
    if torch.cuda.is_available():
        return {}
    if requested():
        from accelerate.utils import InitProcessGroupKwargs

        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}  # `accelerate launch --multi_gpu --num_processes N` then joins N CPU processes over gloo


def configure(accelerator, train: TrainConfig) -> int:
    """Write mmtune's settings into the engine's DeepSpeed config (see the module docstring); -> ZeRO stage."""
    if importlib.util.find_spec("deepspeed") is None:  # accelerate imports it at prepare
        raise ConfigError("a DeepSpeed accelerate config needs deepspeed: pip install 'mmtune[deepspeed]'")
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    stage = int(config.get("zero_optimization", {}).get("stage", plugin.zero_stage or 0))
    if stage not in (2, 3):
        raise ConfigError(f"DeepSpeed zero_optimization.stage {stage}: mmtune runs ZeRO-2 and ZeRO-3 (ZeRO-1 "
                          f"and 0 hold what DDP holds; launch with --multi_gpu instead)")
    replaced = [name for name in MMTUNE_BUILDS if name in config]
    if replaced:
        raise ConfigError(f"the DeepSpeed config has a {' and '.join(replaced)} section: mmtune builds its own "
                          f"AdamW and schedule from train.* (per-part rates, LoRA+); remove the section")
    offload = [k for k in ("offload_optimizer", "offload_param")
               if config.get("zero_optimization", {}).get(k, {}).get("device", "none") not in ("none", None)]
    if offload:
        raise ConfigError(f"DeepSpeed {', '.join(offload)}: offloading needs DeepSpeed's own CPU Adam, and mmtune "
                          f"trains with torch's AdamW; set the device to none")
    wanted = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": train.grad_accum,
              "gradient_clipping": float(train.max_grad_norm or 0.0)}
    for key, value in wanted.items():
        given = config.get(key, "auto")
        if given not in ("auto", value) and key != "train_micro_batch_size_per_gpu":
            log.warning("DeepSpeed %s %s replaced by mmtune's %s (train.%s)", key, given, value,
                        "grad_accum" if key == "gradient_accumulation_steps" else "max_grad_norm")
        config[key] = value
    config["train_batch_size"] = train.grad_accum * accelerator.num_processes
    config["zero_allow_untested_optimizer"] = True  # torch's AdamW, partitioned by ZeRO
    log.info("DeepSpeed ZeRO-%d over %d processes (gradient accumulation %d)", stage, accelerator.num_processes,
             train.grad_accum)
    return stage


@contextmanager
def built_whole(plugin):
    """Models built inside are whole: transformers builds under deepspeed.zero.Init (already partitioned)
    while accelerate's DeepSpeed config is registered with it, so it is unregistered for the build and
    registered again after (transformers' generate then keeps ZeRO-3's processes in step)."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def report(model, optimizer, stage: int) -> None:
    """Log what this process holds: its partition of the trained values (whose AdamW state it keeps) and,
    under ZeRO-3, of every weight."""
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    if stage == 3:  # each parameter's own partition (the fp32 master copy and AdamW state mirror it)
        held = sum(p.ds_tensor.numel() for p in model.parameters() if p.requires_grad)
    else:  # ZeRO-2 hands AdamW one flat partition per group
        held = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    line = f"this process keeps AdamW state for {held:,} of {trained:,} trained values ({100 * held / trained:.0f}%)"
    if stage == 3:
        weights = sum(p.ds_tensor.numel() for p in model.parameters())
        total = sum(p.ds_numel for p in model.parameters())
        line += f" and holds {weights:,} of {total:,} weight values ({100 * weights / total:.0f}%)"
    log.info("DeepSpeed ZeRO-%d: %s", stage, line)


def backward(engine, loss: torch.Tensor) -> None:
    """One micro-batch's backward; the engine steps the optimizer after the step's last micro-batch."""
    engine.backward(loss, scale_wrt_gas=False)  # the loop's loss is already the step's global mean
    engine.step()


def _gathered(module, stage: int, modifier_rank=None):
    """A context in which `module`'s own parameters are whole (ZeRO-3), or nothing to do (ZeRO-2)."""
    if stage < 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=modifier_rank)


def _own_tensors(module) -> list[tuple[str, torch.Tensor]]:
    """A module's own parameters and buffers (not its children's), by name."""
    return list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))


def full_state(model, stage: int, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """The model's whole tensors on the CPU, gathered one module at a time under ZeRO-3 (a collective: every
    process calls it; only `keep`, the process that writes, copies them); None under ZeRO-2, whose
    processes each hold the whole weights."""
    if stage < 3:
        return None
    state = {}
    for prefix, module in model.named_modules(remove_duplicate=False):  # tied weights under each name
        with _gathered(module, stage):
            for name, value in _own_tensors(module) if keep else ():
                state[f"{prefix}.{name}" if prefix else name] = value.detach().cpu().clone()
    return state


def load_full(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into a ZeRO-3 model's shards, one module at a time (a collective)."""
    for prefix, module in model.named_modules():
        with _gathered(module, 3, modifier_rank=0), torch.no_grad():  # process 0's copy is scattered back
            for name, value in _own_tensors(module):
                key = f"{prefix}.{name}" if prefix else name
                if key in tensors:
                    value.copy_(tensors[key].to(value.device, value.dtype))


def save_engine(engine, folder: Path) -> None:
    """DeepSpeed's optimizer partitions (and its trained module weights) into folder/ENGINE_DIR, every process
    writing its own files (a collective)."""
    engine.save_checkpoint(str(folder / ENGINE_DIR), tag=TAG, save_latest=False, exclude_frozen_parameters=True)


def load_engine(engine, folder: Path) -> None:
    """Restore the optimizer partitions saved by `save_engine` (the weights come from model.safetensors)."""
    path, _ = engine.load_checkpoint(str(folder / ENGINE_DIR), tag=TAG, load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        from mmtune.errors import CheckpointError

        raise CheckpointError(f"{folder / ENGINE_DIR} holds no DeepSpeed state this run can load")
