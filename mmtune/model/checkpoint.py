"""Checkpoints: safetensors of what was trained plus the JSON composition config to rebuild the rest.

Every weight that enters a model is loaded here (`mmtune.model.build` only constructs):
    start_model(cfg)         a run's start: model.init_from's weights (a previous stage's checkpoint,
                             or a LLaVA / Voxtral folder: mmtune.model.native) in the raw parts
    load_checkpoint(folder)  a checkpoint rebuilt for eval, inference, export
    load_weights(model, f)   a checkpoint's tensors into a built model (resume)

A checkpoint folder holds
    mmtune_config.json   {"format": "mmtune", "version": 1, "model": ModelConfig as a dict}
    model.safetensors    trained tensors (adapters, projectors, fully trained parts) and the whole
                         of every part built from a config (it has no base weights elsewhere)
    tokenizer/           the tokenizer with its placeholder tokens and chat template
    checksums.json       SHA-256 of every .safetensors file, verified when it is read
Loading rebuilds the model from the config, then loads the tensors; no pickle is ever read.
Folders are written atomically: into a temporary sibling first, then renamed into place. Weights
that are not finite (NaN, Inf) are never written: a checkpoint is always one to go back to.
"""

import copy
import hashlib
import json
import os
import shutil
import stat
from functools import partial
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmtune.config import DataConfig, ModelConfig, from_dict, to_dict
from mmtune.errors import CheckpointError, ConfigError
from mmtune.model.build import UnknownModelError, build_model, part_owner, part_plans
from mmtune.model.native import load_native
from mmtune.model.native_config import native_type
from mmtune.model.plan import apply_plan
from mmtune.model.quantize import dequantize_tensors, restore_4bit

CONFIG_FILE = "mmtune_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CHECKSUMS_FILE = "checksums.json"
EXPORT_MARKER = "mmtune_export.json"  # written by `mmtune export` into its output folder
FORMAT_VERSION = 1


def saved_keys(model) -> list[str]:
    """State-dict keys a checkpoint holds: trained parameters, and the whole of every part with no base
    weights elsewhere (built from a config, or loaded from a previous stage: `model.whole_parts`)."""
    prefixes = tuple(f"{part}." for part in model.whole_parts)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if k in trained or k.startswith(prefixes)]


def save_checkpoint(model, tokenizer, cfg: ModelConfig, folder: str | Path, extra_files: dict | None = None,
                    data: DataConfig | None = None, state: dict | None = None,
                    extra_dirs: dict[str, Path] | None = None) -> Path:
    """Write the checkpoint folder atomically; `extra_files` maps names to bytes/str (training state);
    `data` (the run's data settings: instruction, max_length) is kept for eval and inference; `state`: the
    model's whole tensors where the caller gathered them (a sharded model: mmtune.train.fsdp.full_state);
    `extra_dirs` maps names to folders written elsewhere first (DeepSpeed's state), moved in."""
    folder = Path(folder)
    state = model.state_dict() if state is None else state
    tensors = {k: state[k].detach().to("cpu").contiguous().clone() for k in saved_keys(model)}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeights(f"the weights are not finite (NaN or Inf in {len(bad)} tensors, e.g. {bad[0]}), "
                               f"so {folder} was not written")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = {"format": "mmtune", "version": FORMAT_VERSION, "model": to_dict(cfg),
                  "whole_parts": sorted(model.whole_parts)}
        if data is not None:
            config["data"] = to_dict(data)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600): give it its siblings' mode
        os.chmod(tmp / WEIGHTS_FILE, stat.S_IMODE(os.stat(tmp / CONFIG_FILE).st_mode))
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        for name, contents in (extra_files or {}).items():
            (tmp / name).write_bytes(contents if isinstance(contents, bytes) else contents.encode())
        for name, source in (extra_dirs or {}).items():
            shutil.move(str(source), str(tmp / name))
        sums = {p.name: file_sha256(p) for p in sorted(tmp.glob("*.safetensors"))}
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2))
        replace_dir(tmp, folder)
    except (OSError, SafetensorError) as e:  # disk full, quota, permissions (safetensors reports its own I/O
        shutil.rmtree(tmp, ignore_errors=True)  # errors as SafetensorError): the partial folder goes
        reason = getattr(e, "strerror", None) or str(e)
        raise CheckpointError(f"cannot write checkpoint {folder}: {reason}; the partial folder was removed and "
                              f"earlier checkpoints are untouched") from None
    return folder


class NonFiniteWeights(CheckpointError):
    """The model's weights hold NaN or Inf: no checkpoint is written from them."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):  # 4 MiB at a time (hashlib.file_digest is 3.11+)
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path, names) -> None:
    """Each named file of `folder` has the SHA-256 recorded beside it (checkpoints without
    checksums.json, written by earlier versions, are not checked)."""
    try:
        sums = json.loads((folder / CHECKSUMS_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / CHECKSUMS_FILE} cannot be read ({e}): the checkpoint is damaged; use an "
                              f"earlier checkpoint-N folder") from None
    for name in names:
        if name in sums and (folder / name).exists() and file_sha256(folder / name) != sums[name]:
            raise CheckpointError(f"{folder / name} is damaged or was replaced: its SHA-256 differs from the one "
                                  f"written with it ({CHECKSUMS_FILE}); use an earlier checkpoint-N folder, or copy "
                                  f"the folder again")


def replace_dir(tmp: Path, folder: Path) -> None:
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
    if folder.is_file():
        raise CheckpointError(f"checkpoint folder {folder} is a file: pass the folder written by `mmtune train` "
                              f"(OUTPUT_DIR/final or OUTPUT_DIR/checkpoint-N), not a file in it")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist: pass a folder written by "
                              f"`mmtune train` (OUTPUT_DIR/final or OUTPUT_DIR/checkpoint-N)")
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR) if not (folder / n).exists()]
    export = folder / EXPORT_MARKER
    if missing and export.is_file():
        marker = json.loads(export.read_text())
        source = marker.get("checkpoint", "the checkpoint it was exported from")
        native = marker.get("architecture")
        what = (f"a transformers {native} folder: transformers loads it, and model.init_from starts a new run from "
                f"it" if native else "a plain transformers LLM, towers beside it: transformers loads it "
                                     "(AutoModelForCausalLM.from_pretrained)")
        raise CheckpointError(f"{folder} is an `mmtune export` ({what}), not an mmtune checkpoint; mmtune eval, "
                              f"generate and transcribe take the checkpoint it came from ({source})")
    if missing:
        raise CheckpointError(f"checkpoint folder {folder} lacks {', '.join(missing)}: it is not a complete "
                              f"mmtune checkpoint; pass OUTPUT_DIR/final or an OUTPUT_DIR/checkpoint-N folder")


def start_model(cfg: ModelConfig, device: str | None = None):
    """-> (model, tokenizer) at a run's start: built from the config, with model.init_from's weights (a
    previous stage's checkpoint, LoRA merged; or a LLaVA / Voxtral folder) in the raw parts before this
    run's plans decide what trains."""
    folder = cfg.init_from
    if folder is None:
        return build_model(cfg, device=device)
    if cfg.kind == "whisper":
        raise ConfigError("model.init_from: a Whisper model starts from model.whisper.path (a Whisper checkpoint "
                          "or an `mmtune export` of one), not from an mmtune checkpoint folder")
    if native_type(folder) is not None:  # its config parts were filled from it when the config loaded
        return build_model(cfg, device=device, initial_weights=partial(load_native, folder=folder))
    try:  # before its tokenizer is read: a bad folder is named as such
        read_model_config(folder)
    except CheckpointError as e:
        raise CheckpointError(f"model.init_from: {e}") from None
    return build_model(cfg, str(Path(folder) / TOKENIZER_DIR), device,
                       initial_weights=partial(load_previous_stage, folder=folder))


def load_previous_stage(model, folder: str) -> set[str]:
    """A previous stage's checkpoint into the raw parts (its LoRA merged, into a dequantized base after
    qlora) -> the parts it touched."""
    prev = read_model_config(folder)
    tensors = dequantize_tensors(read_weights(Path(folder) / WEIGHTS_FILE))  # a qlora stage's base as float32
    wrapped = []
    for part, plan in part_plans(prev).items():
        owner, attr = part_owner(model, part)
        if plan in ("lora", "qlora") and owner is not None and any(k.startswith(part + ".") for k in tensors):
            setattr(owner, attr, apply_plan(getattr(owner, attr), "lora", prev.lora))
            wrapped.append((owner, attr))
    check_fits(model.state_dict(), tensors, f"model.init_from {folder}",
               "the stages must use the same model parts and sizes (towers, projector types, hidden sizes)")
    model.load_state_dict(tensors, strict=False)
    for owner, attr in wrapped:
        setattr(owner, attr, getattr(owner, attr).merge_and_unload())
    return {k.split(".", 1)[0] for k in tensors}


def load_checkpoint(folder: str | Path, device: str | None = None, dequantize: bool = False):
    """-> (model, tokenizer, ModelConfig) rebuilt from the folder, on `device` (default CPU).

    dequantize: parts trained with qlora are rebuilt as lora over a float32 base (their 4-bit weights
    dequantized), so their adapters can be merged (export); the ModelConfig returned says lora."""
    folder = Path(folder)
    cfg = read_model_config(folder)
    if dequantize:
        cfg = dequantized_config(cfg)
    try:  # every weight a previous stage (model.init_from) gave is in this folder: it is not read again
        model, tokenizer = build_model(cfg, tokenizer_path=str(folder / TOKENIZER_DIR), device=device)
    except UnknownModelError as e:  # the bad model type is in this folder's config file: name it
        raise UnknownModelError(f"{folder / CONFIG_FILE}: {e}") from None
    model.whole_parts |= set(_read_config(folder).get("whole_parts", []))
    load_weights(model, folder / WEIGHTS_FILE, dequantize=dequantize)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, cfg


def dequantized_config(cfg: ModelConfig) -> ModelConfig:
    """The same model with every `train: qlora` part as `lora` (a float32 base under the same adapters)."""
    cfg = copy.deepcopy(cfg)
    for part in (cfg.llm, cfg.audio, cfg.vision):
        if part is not None and part.train == "qlora":
            part.train = "lora"
    return cfg


def load_weights(model, path: Path, dequantize: bool = False, assign=None) -> None:
    """Load the safetensors file into the rebuilt model, checking names and shapes first. 4-bit base
    weights (qlora) go back into the model's 4-bit layers, or with `dequantize` into float32 ones.
    assign(model, tensors): how the checked tensors go in where an engine partitioned the parameters
    (DeepSpeed ZeRO-3: mmtune.train.zero.load_full; such a parameter keeps its whole shape in ds_shape)."""
    tensors = read_weights(path)
    if dequantize:
        tensors = dequantize_tensors(tensors)
    state = model.state_dict()
    if assign is not None:  # a partitioned parameter's state-dict entry is an empty placeholder
        state = state | {k: torch.empty(p.ds_shape, device="meta") for k, p in model.named_parameters(
            remove_duplicate=False) if hasattr(p, "ds_shape")}
    check_fits(state, tensors, str(path), f"{CONFIG_FILE} does not match the weights; was the folder mixed with "
                                          f"another run's?")
    missing = sorted(set(saved_keys(model)) - set(tensors))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} trained tensors (e.g. {missing[0]}): the weights "
                              f"file is incomplete or from another config; use an earlier checkpoint")
    if assign is not None:
        assign(model, tensors)
    elif any(isinstance(p, DTensor) for p in model.parameters()):  # sharded (FSDP): each process keeps its shard
        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        model.load_state_dict(restore_4bit(model, tensors), strict=False)  # 4-bit weights go in first, whole


def check_fits(state: dict, tensors: dict, where: str, advice: str) -> None:
    """Every tensor has a place of its shape in the model's `state`; else a CheckpointError naming the first
    misfit (projectors first: a projector that does not fit its tower explains the other misfits)."""
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} tensors have no place in this model (e.g. {unknown[0]}): "
                              f"{advice}")
    for key in sorted(tensors, key=lambda k: ("projector" not in k, k)):
        if tuple(tensors[key].shape) != tuple(state[key].shape):
            raise CheckpointError(_shape_message(where, key, tuple(tensors[key].shape), tuple(state[key].shape),
                                                 advice))


def read_weights(path: str | Path) -> dict:
    """All tensors of a safetensors file (never a pickle); a damaged file (or one whose checksum differs
    from the one its checkpoint recorded) is a CheckpointError."""
    path = Path(path)
    verify_checksums(path.parent, (path.name,))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} cannot be read as safetensors ({e}): the file is damaged or was cut off "
                              f"while writing; use an earlier checkpoint-N folder") from None


def _shape_message(where: str, key: str, saved: tuple, built: tuple, advice: str) -> str:
    msg = f"{where}: tensor {key} has shape {saved} but the model built from the config has {built}"
    if "projector" in key and len(saved) == 2 and saved[0] == built[0]:
        msg += (f"; the projector was trained for a tower with hidden size {saved[1]} but this tower gives "
                f"{built[1]}: use the tower the checkpoint was trained with")
    return f"{msg}; {advice}"
