"""Export: merge LoRA and write a plain transformers checkpoint.

A bridge checkpoint's LLM loads with `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer`
without mmtune; towers and projectors are written beside it (`mmtune_towers.safetensors`) so nothing
trained is lost; mmtune itself keeps loading the original checkpoint folder. A Whisper checkpoint
becomes a plain `WhisperForConditionalGeneration` folder with its tokenizer, feature extractor and
generation config (language, task): `transformers.pipeline("automatic-speech-recognition", model=OUT)`
loads and runs it.

The output folder is checked before anything is loaded or written: it may not be a file, nor
be, hold or lie inside the checkpoint; an existing folder is replaced only when it is empty or a
previous export (it has `mmtune_export.json`). The export is written into a temporary sibling
and renamed into place, so a failed export leaves the previous one (or nothing) behind.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import peft
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import WhisperFeatureExtractor

from mmtune.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, N_FFT
from mmtune.audio.io import SAMPLE_RATE
from mmtune.errors import MmtuneError
from mmtune.model.checkpoint import EXPORT_MARKER, load_checkpoint, replace_dir
from mmtune.model.whisper import WhisperASR, merge_lora

log = logging.getLogger("mmtune")

MARKER_FILE = EXPORT_MARKER  # says "this folder is an mmtune export": a later export may replace it


class ExportError(MmtuneError):
    """The export's output folder cannot be used or written."""


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the merged model and what loads it to `out_dir` (created); -> out_dir. A bridge checkpoint
    gives its LLM, tokenizer and towers; a Whisper one a plain WhisperForConditionalGeneration folder."""
    check_out_dir(checkpoint, out_dir)
    out = Path(out_dir).resolve()
    model, tokenizer, _ = load_checkpoint(checkpoint, dequantize=True)  # a qlora base merges as float32
    write = _write_whisper if isinstance(model, WhisperASR) else _write_llm
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


def _write_llm(model, tokenizer, folder: Path) -> dict:
    """The merged LLM and its tokenizer (AutoModelForCausalLM loads them), the towers beside them."""
    llm = model.llm
    if isinstance(llm, peft.PeftModel):
        llm = llm.merge_and_unload()
    llm.config.use_cache = True
    set_generation_ids(llm, tokenizer)
    towers = {k: v.contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    llm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if towers:
        save_file(towers, str(folder / "mmtune_towers.safetensors"))
    return {}


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


def set_generation_ids(llm, tokenizer) -> None:
    """The exported config and generation config name the tokenizer's end-of-turn tokens (plain
    `generate` then stops where mmtune's does: at the template's end of turn or the eos), its pad and
    bos tokens."""
    from transformers import GenerationConfig

    from mmtune.data.chat import end_of_turn_ids

    stop = sorted(end_of_turn_ids(tokenizer))
    ids = {"eos_token_id": stop[0] if len(stop) == 1 else (stop or None), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    ids = {k: v for k, v in ids.items() if v is not None}
    if llm.generation_config is None:
        llm.generation_config = GenerationConfig()
    for key, value in ids.items():  # the base model's sampling defaults (temperature, top_p, ...) stay
        setattr(llm.config, key, value)
        setattr(llm.generation_config, key, value)


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
