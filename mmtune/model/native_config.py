"""Start a bridge from a native transformers folder (LLaVA, Voxtral): the config parts it implies.

    model:
      init_from: models/llava-1.5-7b-hf     # a LlavaForConditionalGeneration folder
      llm: {train: lora}                     # its config and tokenizer come from the folder
      vision: {train: frozen}                # and the tower's config, feature layer, projector

`fill_native_parts(tree)` writes into the config tree (before it becomes dataclasses) what the
folder's config.json says, where the file leaves it out: the LLM's `config` and `tokenizer` (and
the processor's chat template where the tokenizer has none, as llava-hf's folders keep it), the
tower's `config` and `feature_layer`, the projector's type (LLaVA: mlp, 2 layers; Voxtral:
stack_mlp, k = the encoder's intermediate_size / d_model), and for a LLaVA image processor that
pads to a square, `data.image_resize: pad`. What the file says and the folder contradicts (another
projector, another feature layer, other image statistics) is a ConfigError naming both. The weights
are read when the model is built (`mmtune.model.native.load_native`). Only json is read here: a
config loads without importing torch or transformers.
"""

import json
from pathlib import Path

from mmtune.errors import ConfigError

NATIVE_TYPES = ("llava", "voxtral")
CONFIG_NAME = "config.json"
MMTUNE_CONFIG = "mmtune_config.json"  # an mmtune checkpoint folder (mmtune.model.checkpoint.CONFIG_FILE)
# transformers' bookkeeping in a saved config, not architecture
_NOT_ARCHITECTURE = ("architectures", "transformers_version", "dtype", "torch_dtype", "output_attentions",
                     "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type")
# image statistics mmtune uses for a tower built from a config (mmtune.vision.preprocess)
DEFAULT_IMAGE = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                 "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
BICUBIC = 3  # PIL's code, as image processors write `resample`


def native_type(folder: str | Path | None) -> str | None:
    """The model_type of a transformers folder that is not an mmtune checkpoint (None for anything else)."""
    if not folder:
        return None
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or (folder / MMTUNE_CONFIG).exists():
        return None
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def fill_native_parts(tree: dict) -> None:
    """If tree["model"]["init_from"] (resolved) is a LLaVA or Voxtral folder, complete the model parts from it."""
    model = tree.get("model") or {}
    folder = model.get("init_from")
    kind = native_type(folder)
    if kind is None:
        return
    if kind not in NATIVE_TYPES:
        raise ConfigError(f"model.init_from: {folder} is a {kind!r} transformers folder; mmtune starts from "
                          f"llava and voxtral folders (and its own checkpoints): give one of those, or give the "
                          f"parts by model.llm.path / model.vision.path")
    if model.get("whisper") is not None:
        raise ConfigError(f"model.init_from: {folder} is a {kind} model (an LLM with a tower), not Whisper's "
                          f"encoder-decoder: use model.llm, not model.whisper")
    config = _read(Path(folder) / CONFIG_NAME)
    llm = _part(model, "llm")
    if "path" not in llm and "config" not in llm:
        llm["config"] = architecture(config["text_config"])
    llm.setdefault("tokenizer", str(folder))
    if llm["tokenizer"] == str(folder) and "chat_template" not in llm:
        template = processor_chat_template(Path(folder))
        if template is not None:  # else mmtune's default (ChatML) would stand in for the model's own
            llm["chat_template"] = template
    if kind == "llava":
        _fill_llava(model, tree, config, Path(folder))
    else:
        _fill_voxtral(model, config, Path(folder))


def _fill_llava(model: dict, tree: dict, config: dict, folder: Path) -> None:
    vision = _part(model, "vision")
    where = f"model.init_from {folder} (config.json)"
    if "path" not in vision and "config" not in vision:
        vision["config"] = architecture(config["vision_config"])
    layer = config.get("vision_feature_layer", -2)
    if isinstance(layer, list):
        raise ConfigError(f"{where}: vision_feature_layer is {layer}: features concatenated from several layers "
                          f"are not supported (mmtune's tower feeds one layer to the projector)")
    family = "clip" if config["vision_config"].get("model_type", "clip").startswith("clip") else "siglip"
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy != ("default" if family == "clip" else "full"):
        raise ConfigError(f"{where}: vision_feature_select_strategy {strategy!r} with a {family} tower; mmtune drops "
                          f"CLIP's class token (default) and keeps every SigLIP patch (full)")
    _agree(vision, "feature_layer", layer, "model.vision.feature_layer", where)
    projector = vision.setdefault("projector", {})
    _agree(projector, "type", "mlp", "model.vision.projector.type", where)
    _agree(projector, "layers", 2, "model.vision.projector.layers", where)
    if config.get("projector_hidden_act", "gelu") != "gelu" or not config.get("multimodal_projector_bias", True):
        raise ConfigError(f"{where}: its projector (act {config.get('projector_hidden_act')}, bias "
                          f"{config.get('multimodal_projector_bias')}) is not mmtune's mlp (Linear-GELU-Linear, "
                          f"with biases)")
    _check_image_processor(tree, folder, family, int(config["vision_config"].get("image_size", 224)))


def _check_image_processor(tree: dict, folder: Path, family: str, image_size: int) -> None:
    """The folder's image preprocessing is the one mmtune would apply: the same statistics and resample, and
    data.image_resize pad where it pads to a square (its settings are in preprocessor_config.json, or in
    processor_config.json's image_processor as transformers 5 writes them)."""
    fields, path = image_processor_fields(folder)
    if fields is None:
        return
    mean, std = DEFAULT_IMAGE[family]
    differs = [f"{key} {fields[key]} (mmtune uses {want})" for key, want in
               (("image_mean", mean), ("image_std", std), ("resample", BICUBIC))
               if key in fields and (fields[key] != want if key == "resample" else
                                     any(abs(a - b) > 1e-6 for a, b in zip(fields[key], want)))]
    side = fields.get("crop_size") if fields.get("do_center_crop", True) else fields.get("size")
    side = side.get("height", side.get("shortest_edge")) if isinstance(side, dict) else side
    if side is not None and side != image_size:
        differs.append(f"a {side} px square (mmtune feeds the tower its image_size, {image_size} px)")
    if differs:
        raise ConfigError(f"model.init_from {path}: {'; '.join(differs)}: mmtune would preprocess images differently "
                          f"from this model's processor")
    data = tree["data"] = tree.get("data") or {}
    pad = bool(fields.get("do_pad"))
    _agree(data, "image_resize", "pad" if pad else "crop", "data.image_resize",
           f"model.init_from {path} (do_pad {pad})")


def image_processor_fields(folder: Path) -> tuple[dict | None, Path]:
    """The image processor's settings in a model folder, and the file they are in."""
    old = folder / "preprocessor_config.json"
    if old.is_file():
        return _read(old), old
    processor = folder / "processor_config.json"
    if processor.is_file():
        return _read(processor).get("image_processor"), processor
    return None, old


def _fill_voxtral(model: dict, config: dict, folder: Path) -> None:
    audio = _part(model, "audio")
    encoder = config["audio_config"]
    where = f"model.init_from {folder} (config.json)"
    d_model, inner = _field(encoder, "hidden_size", "d_model"), _field(encoder, "intermediate_size", "encoder_ffn_dim")
    if "path" not in audio and "config" not in audio:
        audio["config"] = whisper_encoder_config(encoder)
    if inner % d_model:
        raise ConfigError(f"{where}: the encoder's intermediate_size {inner} is not a multiple of its hidden size "
                          f"{d_model}: Voxtral's projector stacks intermediate_size / hidden_size frames")
    projector = audio.setdefault("projector", {})
    _agree(projector, "type", "stack_mlp", "model.audio.projector.type", where)
    _agree(projector, "stack", inner // d_model, "model.audio.projector.stack", where)


def processor_chat_template(folder: Path) -> str | None:
    """The chat template a folder's processor keeps (chat_template.json, as llava-hf's checkpoints do) when
    its tokenizer has none of its own (chat_template.jinja, or tokenizer_config.json's chat_template)."""
    if (folder / "chat_template.jinja").is_file():
        return None
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file() and _read(tokenizer_config).get("chat_template"):
        return None
    processor = folder / "chat_template.json"
    return _read(processor).get("chat_template") if processor.is_file() else None


def whisper_encoder_config(encoder: dict) -> dict:
    """A Voxtral encoder config (its names) -> the WhisperConfig fields of the same encoder."""
    keys = {"d_model": ("hidden_size", "d_model"), "encoder_layers": ("num_hidden_layers", "encoder_layers"),
            "encoder_attention_heads": ("num_attention_heads", "encoder_attention_heads"),
            "encoder_ffn_dim": ("intermediate_size", "encoder_ffn_dim")}
    out = {"model_type": "whisper"} | {k: _field(encoder, *names) for k, names in keys.items()}
    for key in ("num_mel_bins", "max_source_positions", "scale_embedding", "activation_function", "dropout",
                "attention_dropout", "activation_dropout"):
        if key in encoder:
            out[key] = encoder[key]
    return out


def architecture(config: dict) -> dict:
    """A saved sub-config without transformers' bookkeeping keys (what `from_config` needs to rebuild it)."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _NOT_ARCHITECTURE}


def _part(model: dict, key: str) -> dict:
    if model.get(key) is None:
        model[key] = {}
    return model[key]


def _agree(section: dict, key: str, value, name: str, where: str) -> None:
    """Set section[key] to the folder's value, or refuse a different one the config file gave."""
    given = section.setdefault(key, value)
    if given != value:
        raise ConfigError(f"{name}: {given!r}, but {where} has {value!r}: leave the key out (it follows the folder) "
                          f"or start from another folder")


def _field(config: dict, *names):
    for name in names:
        if name in config:
            return config[name]
    raise ConfigError(f"the folder's audio_config has none of {', '.join(names)}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init_from: cannot read {path} ({e})") from None
