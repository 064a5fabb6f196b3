"""FSDP2 (torch's `fully_shard`) for a run over several processes: `train.fsdp: true`, or an accelerate FSDP
config (`accelerate launch --config_file accelerate_configs/fsdp2.yaml`).

Each process holds 1/N of every sharded parameter, its gradient and its optimizer state; a unit's
parameters are gathered for its forward and backward and freed after. The units:

    every decoder layer of the LLM          (its own unit: gathered one layer at a time)
    every layer of a tower that trains      (towers run on every process: idle ones on a dummy input)
    the model root                          (embeddings, head, norms, projectors, frozen towers)

A frozen tower stays in the root unit, so a process whose micro-batch has no image or clip runs
no collective the others wait on. Frozen and trained parameters (LoRA on a frozen base) share
units: FSDP2 shards parameter by parameter.

Checkpoints stay what one process writes: `full_state` gathers the model's tensors on every
process (a collective) for the main process to save, the optimizer's state is gathered the same
way (`mmtune.train.state`), and both load back into a sharded model (`mmtune.model.checkpoint.load_weights`,
`mmtune.train.state.load_optimizer`: each process keeps its shard). So a run
resumes under another process count, and a single process loads any checkpoint. Evaluation runs
on every process (each forward is a collective), the main process writing the results.
"""

import logging
import os

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

log = logging.getLogger("mmtune")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def requested() -> bool:
    """`accelerate launch` with an FSDP config (it sets ACCELERATE_USE_FSDP for every process, also on a CPU-only
    machine, where accelerate itself then runs plain multi-process DDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard(model, mixed_precision: str = "no") -> None:
    """Apply fully_shard to the units above, in place (torch.distributed must be initialized)."""
    policy = MixedPrecisionPolicy(param_dtype=DTYPES.get(mixed_precision), reduce_dtype=torch.float32)
    units = [layer for layers in _layer_lists(model) for layer in layers]
    for layer in units:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    params = {id(p): p for p in model.parameters()}.values()
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    log.info("FSDP: %d units over %d processes; this process holds %s of %s parameter values (%.0f%%)",
             len(units) + 1, torch.distributed.get_world_size(), f"{held:,}", f"{sum(p.numel() for p in params):,}",
             100 * held / sum(p.numel() for p in params))


def _layer_lists(model) -> list[nn.ModuleList]:
    """The decoder layers of the LLM and the layers of every tower that trains."""
    lists = [transformer_layers(model.llm)]
    for tower in (model.audio_encoder, model.vision_tower):
        if tower is not None and any(p.requires_grad for p in tower.parameters()):
            lists.append(transformer_layers(tower))
    return [layers for layers in lists if layers is not None]


def transformer_layers(module: nn.Module) -> nn.ModuleList | None:
    """The longest ModuleList named `layers` in a module (a transformer's blocks), or None."""
    found = [m for name, m in module.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)]
    return max(found, key=len, default=None)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective: every process calls it, in the same order)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every sharded tensor gathered whole, on every process, on the CPU."""
    return {k: full_tensor(v).detach().cpu() for k, v in model.state_dict().items()}


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole optimizer-state tensor as the shard its parameter holds (unchanged for an unsharded one)."""
    if isinstance(param, DTensor) and tuple(value.shape) == tuple(param.shape):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value
