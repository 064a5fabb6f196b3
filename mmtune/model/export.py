"""Export: merge LoRA and write a plain transformers checkpoint.

`--format` (default auto) says what a bridge checkpoint becomes:

    native  a vision bridge -> LlavaForConditionalGeneration with its LlavaProcessor (image processor,
            tokenizer, chat template); a speech bridge with a stack_mlp projector ->
            VoxtralForConditionalGeneration with its tokenizer and WhisperFeatureExtractor
            (`mmtune.model.native`). `AutoModelForImageTextToText` / the class loads the folder without
            mmtune, and `model.init_from` starts a new run from it.
    llm     the LLM alone (`AutoModelForCausalLM`), its towers and projectors beside it in
            `mmtune_towers.safetensors` so nothing trained is lost.
    auto    native where the model's parts map onto one of those architectures, else llm (an omni
            model with both towers, another projector type, image tiles); the log says which and why.

A Whisper checkpoint becomes a plain `WhisperForConditionalGeneration` folder with its tokenizer,
feature extractor and generation config (language, task): `transformers.pipeline(
"automatic-speech-recognition", model=OUT)` loads and runs it. Every export's config and generation
config name the tokenizer's end-of-turn ids, so plain `generate` stops where mmtune's does.

The output folder is checked before anything is loaded or written: it may not be a file, nor
be, hold or lie inside the checkpoint; an existing folder is replaced only when it is empty or a
previous export (it has `mmtune_export.json`). The export is written into a temporary sibling
and renamed into place, so a failed export leaves the previous one (or nothing) behind.
"""

import json
import logging
import os
import shutil
from functools import partial
from pathlib import Path

import peft
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import GenerationConfig, LlavaProcessor, WhisperFeatureExtractor

from mmtune.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, N_FFT
from mmtune.audio.io import SAMPLE_RATE
from mmtune.errors import MmtuneError
from mmtune.config import DataConfig
from mmtune.data.chat import end_of_turn_ids
from mmtune.data.encode import MediaSpec
from mmtune.model.checkpoint import EXPORT_MARKER, load_checkpoint, read_data_config, replace_dir
from mmtune.model.native import native_format, to_native, write_full_text_config
from mmtune.model.whisper import WhisperASR, merge_lora

log = logging.getLogger("mmtune")

MARKER_FILE = EXPORT_MARKER  # says "this folder is an mmtune export": a later export may replace it
FORMATS = ("auto", "native", "llm")


class ExportError(MmtuneError):
    """The export's output folder cannot be used or written."""


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, format: str = "auto") -> Path:
    """Write the merged model and what loads it to `out_dir` (created); -> out_dir. A bridge checkpoint
    gives a LLaVA / Voxtral folder (format native) or its LLM with the towers beside it (llm); a
    Whisper one a plain WhisperForConditionalGeneration folder."""
    if format not in FORMATS:
        raise ExportError(f"--format {format}: give one of {', '.join(FORMATS)}")
    check_out_dir(checkpoint, out_dir)
    out = Path(out_dir).resolve()
    model, tokenizer, cfg = load_checkpoint(checkpoint, dequantize=True)  # a qlora base merges as float32
    if isinstance(model, WhisperASR):
        write = _write_whisper
    else:
        kind, why = native_format(cfg)
        if format == "native" and kind is None:
            raise ExportError(f"--format native: this model cannot be written as a native transformers model: "
                              f"{why}; use --format llm")
        native = format != "llm" and kind is not None
        if format == "auto":
            log.info("export format: %s", f"native ({kind})" if native else f"llm (not native: {why})")
        write = partial(_write_native, cfg=cfg, checkpoint=checkpoint) if native else _write_llm
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        marker = {"format": "mmtune-export", "checkpoint": str(checkpoint)} | write(model, tokenizer, tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        replace_dir(tmp, out)
    except (OSError, SafetensorError) as e:  # disk full, permissions: the partial folder goes, an old export stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"--out {out_dir}: cannot write the export ({getattr(e, 'strerror', None) or e}); "
                          f"nothing was changed there") from None
    return Path(out_dir)


def _write_native(model, tokenizer, folder: Path, cfg, checkpoint) -> dict:
    """A LLaVA folder (model, processor, chat template) or a Voxtral one (model, tokenizer, feature extractor)."""
    data = read_data_config(checkpoint)
    spec = MediaSpec.from_config(cfg, data) if data is not None else MediaSpec.from_config(cfg, DataConfig())
    native, preprocessor = to_native(merged(model), tokenizer, cfg, spec.image, spec.image_resize)
    native.config.text_config.use_cache = True
    set_generation_ids(native, tokenizer, native.config.text_config)
    native.generation_config.use_cache = True
    native.save_pretrained(str(folder))
    write_full_text_config(folder, native.config.text_config)
    preprocessor.save_pretrained(str(folder))
    if not isinstance(preprocessor, LlavaProcessor):  # a feature extractor: the tokenizer is written on its own
        tokenizer.save_pretrained(str(folder))
    return {"architecture": type(native).__name__, "image_resize": spec.image_resize}


def _write_llm(model, tokenizer, folder: Path) -> dict:
    """The merged LLM and its tokenizer (AutoModelForCausalLM loads them), the towers beside them."""
    llm = merged(model).llm
    llm.config.use_cache = True
    set_generation_ids(llm, tokenizer, llm.config)
    towers = {k: v.contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    llm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if towers:
        save_file(towers, str(folder / "mmtune_towers.safetensors"))
    return {}


def merged(model):
    """The bridge with every LoRA-wrapped part replaced by its merged base model (in place)."""
    for owner, attr in ((model, "llm"), (model.audio_encoder, "encoder"), (model.vision_tower, "model")):
        part = getattr(owner, attr, None) if owner is not None else None
        if isinstance(part, peft.PeftModel):  # (mmtune.model.plan wraps every LoRA part whole)
            setattr(owner, attr, part.merge_and_unload())
    return model


def _write_whisper(model, tokenizer, folder: Path) -> dict:
    """A plain Whisper folder: the model (LoRA merged), its generation config (language, task, no timestamps),
    tokenizer and feature extractor, so `transformers.pipeline("automatic-speech-recognition", model=folder)`
    transcribes as `mmtune transcribe` does."""
    whisper = merge_lora(model.whisper)
    whisper.config.use_cache = True
    whisper.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    feature_extractor(model).save_pretrained(str(folder))
    if model.encoder_input == "real":
        log.warning("this model was trained on real-frame encoder input; transformers' pipeline pads every clip to "
                    "the %d s window, so its transcripts can differ from mmtune's", model.window // FRAMES_PER_SECOND)
    return {"encoder_input": model.encoder_input}


def feature_extractor(model) -> WhisperFeatureExtractor:
    """transformers' Whisper features for this model: its mel bins, clips padded to its encoder's window."""
    if model.window % FRAMES_PER_SECOND:
        raise ExportError(f"the encoder's window is {model.window} mel frames, not whole seconds: transformers' "
                          f"WhisperFeatureExtractor pads to chunk_length seconds; use max_source_positions that are "
                          f"a multiple of 50")
    return WhisperFeatureExtractor(feature_size=model.whisper.config.num_mel_bins, sampling_rate=SAMPLE_RATE,
                                   hop_length=HOP_LENGTH, chunk_length=model.window // FRAMES_PER_SECOND, n_fft=N_FFT)


def set_generation_ids(model, tokenizer, config) -> None:
    """The model's generation config and `config` (the LLM's) name the tokenizer's end-of-turn tokens (plain
    `generate` then stops where mmtune's does: at the template's end of turn or the eos), its pad and bos."""
    stop = sorted(end_of_turn_ids(tokenizer))
    ids = {"eos_token_id": stop[0] if len(stop) == 1 else (stop or None), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    ids = {k: v for k, v in ids.items() if v is not None}
    if model.generation_config is None:
        model.generation_config = GenerationConfig()
    for key, value in ids.items():  # the base model's sampling defaults (temperature, top_p, ...) stay
        setattr(config, key, value)
        setattr(model.generation_config, key, value)


def check_out_dir(checkpoint: str | Path, out_dir: str | Path) -> None:
    """Raise ExportError when `out_dir` is a file, overlaps the checkpoint folder, or is a non-empty
    folder that is not a previous export."""
    out, ckpt = Path(out_dir).resolve(), Path(checkpoint).resolve()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out_dir} is a file: give a folder (it is created)")
    if out == ckpt or ckpt in out.parents or out in ckpt.parents:
        where = "is" if out == ckpt else "lies inside" if ckpt in out.parents else "holds"
        raise ExportError(f"--out {out_dir} {where} the checkpoint folder {checkpoint}: write the export to "
                          f"a folder of its own, e.g. exported/{ckpt.name}")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_FILE).is_file():
        raise ExportError(f"--out {out_dir} is a folder that holds other files (not a previous mmtune export): "
                          f"give a new or empty folder, or remove it first")
