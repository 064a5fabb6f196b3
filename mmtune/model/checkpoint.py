"""Checkpoints: safetensors of what was trained plus the JSON composition config to rebuild the rest.

A checkpoint folder holds
    mmtune_config.json   {"format": "mmtune", "version": 1, "model": ModelConfig as a dict}
    model.safetensors    trained tensors (adapters, projectors, fully trained parts) and the whole
                         of every part built from a config (it has no base weights elsewhere)
    tokenizer/           the tokenizer with its placeholder tokens and chat template
Loading rebuilds the model from the config, then loads the tensors; no pickle is ever read.
Folders are written atomically: into a temporary sibling first, then renamed into place.
"""

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmtune.config import DataConfig, ModelConfig, from_dict, to_dict
from mmtune.errors import CheckpointError

CONFIG_FILE = "mmtune_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def saved_keys(model) -> list[str]:
    """State-dict keys a checkpoint holds: trained parameters, and the whole of every part with no base
    weights elsewhere (built from a config, or loaded from a previous stage: `model.whole_parts`)."""
    prefixes = tuple(f"{part}." for part in model.whole_parts)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if k in trained or k.startswith(prefixes)]


def save_checkpoint(model, tokenizer, cfg: ModelConfig, folder: str | Path, extra_files: dict | None = None,
                    data: DataConfig | None = None) -> Path:
    """Write the checkpoint folder atomically; `extra_files` maps names to bytes/str (training state);
    `data` (the run's data settings: instruction, max_length) is kept for eval and inference."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = model.state_dict()
    tensors = {k: state[k].detach().to("cpu").contiguous().clone() for k in saved_keys(model)}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"format": "mmtune", "version": FORMAT_VERSION, "model": to_dict(cfg),
              "whole_parts": sorted(model.whole_parts)}
    if data is not None:
        config["data"] = to_dict(data)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    for name, data in (extra_files or {}).items():
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    _replace_dir(tmp, folder)
    return folder


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Move `tmp` to `folder`; an existing folder is swapped out first and removed after."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def read_model_config(folder: str | Path) -> ModelConfig:
    return from_dict(ModelConfig, _read_config(folder)["model"], "model.")


def read_data_config(folder: str | Path) -> DataConfig | None:
    """The data settings the checkpoint's run used, or None for checkpoints saved without them."""
    data = _read_config(folder).get("data")
    return from_dict(DataConfig, data, "data.") if data is not None else None


def _read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    _check_files(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not valid JSON ({e}); the checkpoint is damaged, "
                              f"use an earlier checkpoint-N folder") from None
    if config.get("format") != "mmtune" or "model" not in config:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not an mmtune checkpoint config (no format/model keys)")
    return config


def _check_files(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist: pass a folder written by "
                              f"`mmtune train` (OUTPUT_DIR/final or OUTPUT_DIR/checkpoint-N)")
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR) if not (folder / n).exists()]
    if missing:
        raise CheckpointError(f"checkpoint folder {folder} lacks {', '.join(missing)}: it is not a complete "
                              f"mmtune checkpoint; pass OUTPUT_DIR/final or an OUTPUT_DIR/checkpoint-N folder")


def load_checkpoint(folder: str | Path, device: str | None = None):
    """-> (model, tokenizer, ModelConfig) rebuilt from the folder, on `device` (default CPU)."""
    from mmtune.model.build import UnknownModelError, build_model

    folder = Path(folder)
    cfg = read_model_config(folder)
    try:  # init_from="" : every weight a previous stage gave is in this folder, so it is not read again
        model, tokenizer = build_model(cfg, tokenizer_path=str(folder / TOKENIZER_DIR), device=device, init_from="")
    except UnknownModelError as e:  # the bad model type is in this folder's config file: name it
        raise UnknownModelError(f"{folder / CONFIG_FILE}: {e}") from None
    model.whole_parts |= set(_read_config(folder).get("whole_parts", []))
    load_weights(model, folder / WEIGHTS_FILE)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, cfg


def load_weights(model, path: Path) -> None:
    """Load the safetensors file into the rebuilt model, checking names and shapes first."""
    state = model.state_dict()
    expected = set(saved_keys(model))
    tensors = read_weights(path)
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CheckpointError(f"{path} holds {len(unknown)} tensors this model does not have (e.g. {unknown[0]}): "
                              f"{CONFIG_FILE} does not match the weights; was the folder mixed with another run's?")
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} trained tensors (e.g. {missing[0]}): the weights "
                              f"file is incomplete or from another config; use an earlier checkpoint")
    # projectors first: a projector that does not fit its tower is the mismatch that explains the others
    for key in sorted(tensors, key=lambda k: ("projector" not in k, k)):
        if tuple(tensors[key].shape) != tuple(state[key].shape):
            raise CheckpointError(_shape_message(path, key, tuple(tensors[key].shape), tuple(state[key].shape)))
    model.load_state_dict(tensors, strict=False)


def read_weights(path: str | Path) -> dict:
    """All tensors of a safetensors file (never a pickle); a damaged file is a CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} cannot be read as safetensors ({e}): the file is damaged or was cut off "
                              f"while writing; use an earlier checkpoint-N folder") from None


def _shape_message(path: Path, key: str, saved: tuple, built: tuple) -> str:
    msg = f"{path}: tensor {key} has shape {saved} but the rebuilt model expects {built}"
    if "projector" in key and len(saved) == 2 and saved[0] == built[0]:
        msg += (f"; the projector was trained for a tower with hidden size {saved[1]} but this tower gives "
                f"{built[1]}: use the tower the checkpoint was trained with")
    return msg
