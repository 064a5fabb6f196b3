"""Build a `MultimodalLM` and its tokenizer from a `ModelConfig`.

Each part comes from a local path / hub id (as in transformers) or from a transformers config
(the offline tiny models). Parts built from a config start from `init_seed`, so a rebuild is
the same model; their weights are saved whole in checkpoints (`mmtune.model.checkpoint`).
"""

import logging
from collections.abc import Callable

import torch
import transformers
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel,
                          SiglipVisionConfig, SiglipVisionModel, WhisperConfig, WhisperForConditionalGeneration,
                          WhisperModel)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmtune.audio.encoder import AudioEncoder
from mmtune.audio.features import MAX_FRAMES
from mmtune.config import ConfigError, ModelConfig, TowerConfig
from mmtune.errors import MmtuneError
from mmtune.model.attention import resolve_backend, transformers_name, uses_packing_kwargs
from mmtune.model.bridge import MultimodalLM
from mmtune.model.hub import check_sources
from mmtune.model.placeholders import window_frames
from mmtune.model.plan import apply_plan, describe_parameters, freeze
from mmtune.model.projector import build_projector
from mmtune.model.tokenizer import load_tokenizer, placeholder_ids
from mmtune.model.whisper import EOT, SOT, WhisperASR, apply_whisper_plans, set_generation_config
from mmtune.vision.tower import VisionTower

log = logging.getLogger("mmtune")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VISION_MODELS = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
                 "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
VISION_CONFIGS = {"clip_vision_model": CLIPVisionConfig, "siglip_vision_model": SiglipVisionConfig}


class UnknownModelError(MmtuneError, ValueError):
    """A model type mmtune cannot build; the message lists the supported ones."""


def build_model(cfg: ModelConfig, tokenizer_path: str | None = None, device: str | None = None,
                initial_weights: Callable[[MultimodalLM], set[str]] | None = None):
    """-> (model, tokenizer): a MultimodalLM (or a WhisperASR for model.whisper). `tokenizer_path` overrides
    the config's (checkpoints ship theirs). Only constructs: `initial_weights(model)` (given by
    `mmtune.model.checkpoint.start_model` for model.init_from) loads weights into the raw parts before the
    plans decide what trains, and returns the parts it loaded (saved whole in checkpoints from then on).
    """
    check_sources(cfg)  # a hub id with no cache and no network: one error in seconds, not retries
    if cfg.kind == "whisper":
        return build_whisper(cfg, tokenizer_path, device)
    backend = resolve_backend(cfg.attn_implementation, device)
    attn = transformers_name(backend)
    dtype = DTYPES[cfg.dtype]
    tokenizer = load_tokenizer(tokenizer_path or cfg.llm.tokenizer or cfg.llm.path, cfg.llm.chat_template)
    # parts built from a config (and LoRA's initial A matrices) draw from init_seed, in a fork of the global
    # generator: what the caller seeded (train.seed: dropout, augmentation) is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = _build_parts(cfg, tokenizer, backend, attn, dtype)
        if initial_weights is not None:
            model.whole_parts |= initial_weights(model)
        apply_plans(model, cfg)
    log.info("attention backend: %s; %s", backend, describe_parameters(model))
    return model, tokenizer


def build_whisper(cfg: ModelConfig, tokenizer_path: str | None = None, device: str | None = None):
    """-> (WhisperASR, its tokenizer): a WhisperForConditionalGeneration from a path / hub id or a config dict
    (then drawn from init_seed, its vocabulary the tokenizer's), with the encoder's and decoder's plans applied."""
    w = cfg.whisper
    tokenizer = load_whisper_tokenizer(tokenizer_path or w.tokenizer or w.path)
    # PyTorch SDPA (or eager when asked): the decoder runs with explicit causal and cross-attention masks
    attn = "eager" if cfg.attn_implementation == "eager" else "sdpa"
    dtype = DTYPES[cfg.dtype]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        if w.config is not None:
            _check_type(w.config.get("model_type", "whisper"), ("whisper",), "model.whisper.config")
            vocab = tokenizer.get_vocab()
            ids = dict(decoder_start_token_id=vocab[SOT], eos_token_id=vocab[EOT], pad_token_id=vocab[EOT],
                       bos_token_id=vocab[EOT])
            config = WhisperConfig(**{**{k: v for k, v in w.config.items() if k != "model_type"},
                                      "vocab_size": len(tokenizer), **ids})
            config._attn_implementation = attn
            whisper = WhisperForConditionalGeneration(config).to(dtype)
            init_convs_from_scratch(whisper.model.encoder)
        else:
            _check_type(AutoConfig.from_pretrained(w.path).model_type, ("whisper",), f"model.whisper.path {w.path}")
            whisper = WhisperForConditionalGeneration.from_pretrained(w.path, dtype=dtype, attn_implementation=attn)
        set_generation_config(whisper, tokenizer, w.language, w.task)
        whisper.config.use_cache = False
        apply_whisper_plans(whisper, {"encoder": w.encoder, "decoder": w.decoder}, cfg.lora)
    model = WhisperASR(whisper, w.encoder_input, whole_parts={"whisper"} if w.config is not None else set())
    log.info("attention backend: %s; %s", attn, describe_parameters(model))
    return model, tokenizer


def load_model_tokenizer(cfg: ModelConfig):
    """The tokenizer the config's model uses (the LLM's, or the Whisper model's), without building the model."""
    if cfg.kind == "whisper":
        return load_whisper_tokenizer(cfg.whisper.tokenizer or cfg.whisper.path)
    return load_tokenizer(cfg.llm.tokenizer or cfg.llm.path, cfg.llm.chat_template)


def load_whisper_tokenizer(path: str):
    """A Whisper tokenizer (its special tokens name the decoder prompt); its pad token is <|endoftext|>."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if SOT not in tokenizer.get_vocab():
        raise ConfigError(f"model.whisper.tokenizer: {path} has no {SOT} token: give a Whisper tokenizer "
                          f"(e.g. examples/whisper_digits/tokenizer, or the folder of a Whisper checkpoint)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = EOT
    return tokenizer


def _build_parts(cfg: ModelConfig, tokenizer, backend: str, attn: str, dtype: torch.dtype) -> MultimodalLM:
    """The LLM, towers and projectors as the config describes them (no plan applied yet)."""
    llm = build_llm(cfg, len(tokenizer), attn, dtype)
    audio = vision = audio_proj = vision_proj = None
    audio_window = MAX_FRAMES
    if cfg.audio is not None:
        audio = AudioEncoder(build_whisper_encoder(cfg.audio, dtype, encoder_attention(backend)))
        audio_window = window_frames(cfg.audio.window_seconds, audio.encoder.config.max_source_positions)
        audio_proj = build_projector(cfg.audio.projector, audio.hidden_size, llm.config.hidden_size).to(dtype)
    if cfg.vision is not None:
        vision = VisionTower(build_vision_model(cfg.vision, dtype, attn), cfg.vision.feature_layer)
        vision_proj = build_projector(cfg.vision.projector, vision.hidden_size, llm.config.hidden_size).to(dtype)
    return MultimodalLM(llm, placeholder_ids(tokenizer), audio, audio_proj, vision, vision_proj,
                        audio_stack=cfg.audio.projector.stack if cfg.audio else 1, audio_window=audio_window,
                        whole_parts=config_built_parts(cfg), attn_kwargs_for_packing=uses_packing_kwargs(backend))


# where each part's wrapped module lives: (owner attribute path, module attribute)
PARTS = {"llm": ("", "llm"), "audio_encoder": ("audio_encoder", "encoder"), "vision_tower": ("vision_tower", "model")}


def part_owner(model: MultimodalLM, part: str):
    owner_path, attr = PARTS[part]
    owner = getattr(model, owner_path) if owner_path else model
    return owner, attr


def part_plans(cfg: ModelConfig) -> dict:
    """{part: "frozen" | "lora" | "qlora" | "full" | "hft"}, None for a tower the config does not have."""
    return {"llm": cfg.llm.train, "audio_encoder": cfg.audio and cfg.audio.train,
            "vision_tower": cfg.vision and cfg.vision.train}


def apply_plans(model: MultimodalLM, cfg: ModelConfig) -> None:
    """Freeze / fully train / LoRA-wrap each part, as the config says; projectors train unless frozen."""
    for part, plan in part_plans(cfg).items():
        owner, attr = part_owner(model, part)
        if owner is not None:
            setattr(owner, attr, apply_plan(getattr(owner, attr), plan, cfg.lora, part, cfg.quantization))
    freeze(model.audio_projector, cfg.audio is not None and cfg.audio.projector.frozen)
    freeze(model.vision_projector, cfg.vision is not None and cfg.vision.projector.frozen)


def config_built_parts(cfg: ModelConfig) -> set[str]:
    """Parts with no base weights elsewhere: saved whole in every checkpoint."""
    parts = {"audio_projector", "vision_projector"}
    if cfg.llm.config is not None:
        parts.add("llm")
    if cfg.audio is not None and cfg.audio.config is not None:
        parts.add("audio_encoder")
    if cfg.vision is not None and cfg.vision.config is not None:
        parts.add("vision_tower")
    return parts


def build_llm(cfg: ModelConfig, vocab_size: int, attn: str, dtype: torch.dtype) -> nn.Module:
    """Any AutoModelForCausalLM, embeddings grown to the tokenizer (new rows: the mean row, deterministic)."""
    if cfg.llm.path is not None:
        llm = AutoModelForCausalLM.from_pretrained(cfg.llm.path, dtype=dtype, attn_implementation=attn)
    else:
        config = _config_from_dict(cfg.llm.config, "model.llm.config")
        llm = AutoModelForCausalLM.from_config(config, attn_implementation=attn).to(dtype)
    old = llm.get_input_embeddings().weight.shape[0]
    if vocab_size > old:
        llm.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (llm.get_input_embeddings(), llm.get_output_embeddings())}.values():
                if layer is not None and layer.weight.shape[0] == vocab_size:
                    layer.weight[old:] = layer.weight[:old].mean(0)
                    if getattr(layer, "bias", None) is not None:
                        layer.bias[old:] = 0.0
    llm.config.use_cache = False
    return llm


def encoder_attention(backend: str) -> str:
    """The Whisper encoder packs a batch's clips into one varlen call where a varlen kernel runs."""
    return transformers_name("varlen") if backend in ("varlen", "flash_attention_2") else "sdpa"


def build_whisper_encoder(tower: TowerConfig, dtype: torch.dtype, attn: str = "sdpa") -> nn.Module:
    """The encoder half of a Whisper checkpoint, or a fresh one from a config dict."""
    if tower.config is not None:
        config = WhisperConfig(**{k: v for k, v in tower.config.items() if k != "model_type"})
        _check_type(tower.config.get("model_type", "whisper"), ("whisper",), "model.audio.config")
        encoder = WhisperEncoder(config).to(dtype)
        init_convs_from_scratch(encoder)
    else:
        _check_type(AutoConfig.from_pretrained(tower.path).model_type, ("whisper",), f"model.audio.path {tower.path}")
        encoder = WhisperModel.from_pretrained(tower.path, dtype=dtype).encoder  # decoder dropped with the wrapper
    encoder.config._attn_implementation = attn
    return encoder


FRESH_POSITION_SCALE = 0.1  # sinusoid table scale for a from-scratch encoder (per-frame norm 8 -> 0.8)


def init_convs_from_scratch(encoder: nn.Module) -> None:
    """He init for a fresh Whisper encoder's convolutions, and quieter positions.

    With transformers' std 0.02 the convolutions' output (norm ~0.6 per frame) is drowned by the
    sinusoidal positions (norm 8): every clip looks alike to the LLM, and the offline example
    predicted one constant answer after 1000 steps. He init and a 0.1 position scale put content
    first; pretrained encoders (given by path) are never touched.
    """
    for conv in (encoder.conv1, encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    with torch.no_grad():
        encoder.embed_positions.weight.mul_(FRESH_POSITION_SCALE)


def build_vision_model(tower: TowerConfig, dtype: torch.dtype, attn: str) -> nn.Module:
    """A CLIPVisionModel / SiglipVisionModel from a checkpoint (full CLIP/SigLIP ones too) or a config."""
    attn = attn if attn in ("sdpa", "eager", "flash_attention_2") else "sdpa"
    if tower.config is not None:
        model_type = tower.config.get("model_type", "")
        _check_type(model_type, tuple(VISION_CONFIGS), "model.vision.config")
        config = VISION_CONFIGS[model_type](**{k: v for k, v in tower.config.items() if k != "model_type"})
        config._attn_implementation = attn
        return VISION_MODELS[model_type](config).to(dtype)
    model_type = AutoConfig.from_pretrained(tower.path).model_type
    _check_type(model_type, tuple(VISION_MODELS), f"model.vision.path {tower.path}")
    return VISION_MODELS[model_type].from_pretrained(tower.path, dtype=dtype, attn_implementation=attn)


def _config_from_dict(values: dict, key: str):
    values = dict(values)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise UnknownModelError(f"{key}: add model_type (e.g. llama, qwen2) so transformers knows the architecture")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError:  # transformers' message lists every model type it has: hundreds of names
        raise UnknownModelError(f"{key}: unknown model_type {model_type!r}: transformers {transformers.__version__} "
                                f"has no such architecture; use a causal LM type it knows (e.g. llama, qwen2, "
                                f"mistral, gemma) or upgrade transformers") from None


def _check_type(model_type: str, allowed: tuple, key: str) -> None:
    if model_type not in allowed:
        raise UnknownModelError(f"{key}: model type {model_type!r} is not supported here; "
                                f"use one of: {', '.join(allowed)}")
