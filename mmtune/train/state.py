"""Training state beside the model in a checkpoint, without pickle.

    optimizer.safetensors   every optimizer tensor, keyed "<param index>.<name>"
    trainer_state.json      step, data position, schedule, optimizer hyper-parameters, RNG states
    rng.safetensors         torch's CPU (and CUDA) generator states as uint8 tensors
"""

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from mmtune.errors import CheckpointError
from mmtune.model.checkpoint import verify_checksums
from mmtune.train.fsdp import full_tensor, shard_like

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


def optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[bytes, dict]:
    """(safetensors bytes of the per-parameter tensors, JSON-able rest of the state dict)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):  # a sharded (FSDP) tensor is gathered whole: every process calls this
                tensors[f"{index}.{name}"] = full_tensor(value).detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return save(tensors) if tensors else save({"_empty": torch.zeros(0)}), {"param_groups": state["param_groups"],
                                                                             "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, meta: dict) -> None:
    state: dict = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key == "_empty":
                continue
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = f.get_tensor(key)
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    for index, values in state.items():
        if index < len(params):  # under FSDP each process keeps its parameter's shard of the whole tensor
            state[index] = {name: shard_like(v, params[index]) if torch.is_tensor(v) else v for name, v in values.items()}
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except ValueError as e:  # other parameter groups: a checkpoint of another version or another plan
        raise CheckpointError(f"{path}: the optimizer state does not fit this run's parameter groups ({e}); it was "
                              f"written by another mmtune version or plan: start a new run from its weights with "
                              f"model.init_from={path.parent}") from None


def rng_state() -> tuple[bytes, dict]:
    """Global RNGs (torch, CUDA, Python, NumPy). The data's draws derive from (seed, epoch, row) and
    keep no generator state of their own."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}
    return save(tensors), meta


def set_rng_state(path: Path, meta: dict) -> None:
    with safe_open(str(path), framework="pt") as f:
        torch.set_rng_state(f.get_tensor("torch"))
        cuda = sorted(k for k in f.keys() if k.startswith("cuda."))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(k) for k in cuda])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def training_files(step: int, optimizer, scheduler, position: dict, encoder, best=None, config: dict | None = None,
                   resumes: list | None = None, engine: dict | None = None) -> dict[str, bytes | str]:
    """Everything besides the model that resume needs, as {file name: contents}.
    optimizer: None where the engine saves the optimizer state itself (DeepSpeed: mmtune.train.zero);
    position: the batch plan's {"epoch", "index"} after the last batch trained on; best: the run's
    `train.best.Best` (which checkpoint is best, how long early stopping has waited) or None;
    config: the run's whole config (a resume compares it with its own); resumes: the settings
    earlier resumes changed, for the report; engine: `mmtune.train.engine.Engine.record`."""
    files = {}
    opt_meta = None
    if optimizer is not None:
        files[OPTIMIZER_FILE], opt_meta = optimizer_files(optimizer)
    files[RNG_FILE], rng_meta = rng_state()
    state = {"step": step, "stream": position, "encoder": encoder.state_dict(), "scheduler": scheduler.state_dict(),
             "optimizer": opt_meta, "rng": rng_meta, "best": best.state_dict() if best is not None else None,
             "config": config, "resumes": resumes or [], "engine": engine}
    return files | {STATE_FILE: json.dumps(state)}


def saved_config(folder: Path) -> dict | None:
    """{"step", "config"} of a checkpoint's run, or None when it has no training state or no config."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / STATE_FILE} cannot be read ({e}); the checkpoint is damaged, use an "
                              f"earlier checkpoint-N folder") from None
    return {"step": state.get("step"), "config": state["config"]} if state.get("config") else None


def load_training_state(folder: Path, optimizer, scheduler, encoder) -> dict:
    """Restore optimizer (None: the engine restores its own), schedule, the encoder's seed and RNGs from
    `folder`; returns the state JSON, whose "stream" is the plan position to continue from."""
    wanted = (STATE_FILE, OPTIMIZER_FILE, RNG_FILE) if optimizer is not None else (STATE_FILE, RNG_FILE)
    missing = [n for n in wanted if not (folder / n).exists()]
    if missing:
        raise CheckpointError(f"{folder} lacks {', '.join(missing)}: it holds a model but no training state, "
                              f"so a run cannot resume from it (final/ folders cannot; use checkpoint-N)")
    state = json.loads((folder / STATE_FILE).read_text())
    verify_checksums(folder, wanted[1:])
    if optimizer is not None:
        load_optimizer(optimizer, folder / OPTIMIZER_FILE, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "encoder" not in state:
        raise CheckpointError(f"{folder} was written before data draws derived from (seed, epoch, row); its "
                              f"augmentation state cannot be continued exactly: start a new run from its weights "
                              f"with model.init_from={folder}")
    encoder.load_state_dict(state["encoder"])
    set_rng_state(folder / RNG_FILE, state["rng"])
    return state
