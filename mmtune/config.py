"""One configuration mechanism: a YAML file validated into dataclasses, plus `key.sub=value`
overrides. Every error names the key and says what to change ("did you mean ...").
A run's length is train.max_steps or train.epochs; an override of either replaces the file's other.

    cfg = load_config("examples/speech_digits/config.yaml", ["max_steps=2", "train.lr=1e-3"])
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmtune.errors import ConfigError
from mmtune.model.native_config import fill_native_parts, native_type

TRAIN_PLANS = ("frozen", "lora", "qlora", "full", "hft")  # qlora: 4-bit NF4 base (bitsandbytes) + LoRA; hft: Half
# Fine-Tuning (full, with half of each layer frozen in turn: mmtune.train.hft)
DEFAULT_MAX_STEPS = 100  # a run's length when neither train.max_steps nor train.epochs is given
GROUP_COLUMNS = ("voice", "speaker", "task", "language")  # eval.group_by's default, where the rows have them
LOWER_IS_BETTER = ("loss", "wer", "cer")  # eval metrics; accuracy is the one where higher is better
EVAL_METRICS = LOWER_IS_BETTER + ("accuracy",)
NORMALIZERS = ("mmtune", "whisper_english", "whisper_basic")  # eval.normalizer (mmtune.eval.metrics)
# names other trainers use for a key, so a config written for them is told the key mmtune calls it
KEY_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "gradient_accumulation_steps": "grad_accum",
               "lr_scheduler_type": "schedule", "save_steps": "save_every", "eval_steps": "eval_every",
               "logging_steps": "log_every", "save_total_limit": "keep_last", "resume_from_checkpoint": "resume",
               "per_device_train_batch_size": "batch_size (in data)", "max_seq_length": "max_length (in data)",
               "bf16": "mixed_precision: bf16", "lora_r": "r (in model.lora)", "lora_alpha": "alpha (in model.lora)"}


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_at_least(owner, minimum: float, *keys: str, optional: bool = False) -> None:
    """Each of `keys` of `owner` is a number >= minimum (or None where `optional`)."""
    for key in keys:
        value = getattr(owner, key)
        if value is None and optional:
            continue
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum):
            raise ConfigError(f"{key}: must be >= {minimum:g}, got {value!r}")


def _check_rates(owner) -> None:
    """A part's own lr (> 0) and weight_decay (>= 0), where given."""
    if owner.lr is not None:
        _check_above(owner, "lr", 0)
    _check_at_least(owner, 0, "weight_decay", optional=True)


def _check_source(owner, tokenizer_needed: str | None = None) -> None:
    """Exactly one of `path` / `config`; built from `config`, a `tokenizer` too (`tokenizer_needed` says why)."""
    if (owner.path is None) == (owner.config is None):
        raise ConfigError("give exactly one of `path` (checkpoint or hub id) or `config`")
    if tokenizer_needed and owner.config is not None and owner.tokenizer is None:
        raise ConfigError(f"tokenizer: {tokenizer_needed}")


def _check_above(owner, key: str, minimum: float) -> None:
    value = getattr(owner, key)
    if not (isinstance(value, (int, float)) and value > minimum):
        raise ConfigError(f"{key}: must be > {minimum:g}, got {value!r}")


@dataclass
class ProjectorConfig:
    type: str = "mlp"  # linear | mlp (LLaVA mlp2x_gelu) | stack (ultravox: stack frames + SwiGLU) | stack_mlp (Voxtral)
    layers: int = 2  # mlp: number of Linear layers (GELU between them)
    stack: int = 1  # stack: consecutive encoder frames concatenated into one token
    hidden_size: int | None = None  # inner width; default: the LLM's hidden size
    frozen: bool = False  # projectors train unless frozen
    lr: float | None = None  # this projector's learning rate (default: train.lr)
    weight_decay: float | None = None  # and weight decay (default: train.weight_decay)

    def __post_init__(self):
        _check_choice("type", self.type, ("linear", "mlp", "stack", "stack_mlp"))
        _check_rates(self)
        if self.layers < 1:
            raise ConfigError(f"layers: must be >= 1, got {self.layers}")
        if self.stack < 1:
            raise ConfigError(f"stack: must be >= 1, got {self.stack}")
        if self.type not in ("stack", "stack_mlp") and self.stack != 1:
            raise ConfigError("stack: frame stacking needs projector.type: stack or stack_mlp")


@dataclass
class TowerConfig:
    """An encoder tower: given by a local path / hub id, or built from a transformers config."""

    path: str | None = None
    config: dict | None = None  # e.g. {model_type: whisper, d_model: 64, ...} for offline tiny models
    train: str = "frozen"  # frozen | lora | qlora | full | hft
    feature_layer: int = -2  # vision: hidden state fed to the projector (LLaVA: second to last)
    window_seconds: float = 30.0  # audio: longer clips are encoded in windows of at most this many seconds
    encoder_input: str = "real"  # audio: real (each clip's own frames) | padded (every clip filled to one window)
    max_tiles: int = 1  # vision: > 1 cuts large images into up to this many tower-sized tiles + an overview
    lr: float | None = None  # this tower's learning rate when it trains (default: train.lr)
    weight_decay: float | None = None  # and weight decay (default: train.weight_decay)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self):
        _check_rates(self)
        _check_source(self)
        _check_choice("train", self.train, TRAIN_PLANS)
        _check_choice("encoder_input", self.encoder_input, ENCODER_INPUTS)
        if not isinstance(self.max_tiles, int) or self.max_tiles < 1:
            raise ConfigError(f"max_tiles: {self.max_tiles!r}: give a whole number >= 1 (1: one square per image)")
        if not 0.01 <= float(self.window_seconds):
            raise ConfigError(f"window_seconds: {self.window_seconds!r}: give a window of at least 0.01 s "
                              f"(one mel frame), at most the encoder's 30 s")


@dataclass
class LLMConfig:
    path: str | None = None
    config: dict | None = None  # e.g. {model_type: qwen2, hidden_size: 64, ...}
    tokenizer: str | None = None  # default: `path`; required with `config`
    train: str = "lora"  # frozen | lora | qlora | full | hft
    chat_template: str | None = None  # overrides the tokenizer's template (Jinja text)
    lr: float | None = None  # the LLM's learning rate (default: train.lr)
    weight_decay: float | None = None  # and weight decay (default: train.weight_decay)

    def __post_init__(self):
        _check_rates(self)
        _check_source(self, "an LLM built from `config` needs a tokenizer path")
        _check_choice("train", self.train, TRAIN_PLANS)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names
    use_dora: bool = False  # DoRA (Liu et al. 2024): a learned magnitude per output, LoRA on the direction
    use_rslora: bool = False  # rsLoRA (Kalajdzievski 2023): scale alpha / sqrt(r) instead of alpha / r
    loraplus_lr_ratio: float | None = None  # LoRA+ (Hayou et al. 2024): B matrices learn this many times faster (16)

    def __post_init__(self):
        _check_at_least(self, 1, "r")
        if self.loraplus_lr_ratio is not None:
            _check_above(self, "loraplus_lr_ratio", 0)
        _check_above(self, "alpha", 0)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: {self.dropout!r} is not a probability in [0, 1)")
        if not (self.target_modules == "all-linear" or (isinstance(self.target_modules, list) and self.target_modules
                                                         and all(isinstance(m, str) for m in self.target_modules))):
            raise ConfigError(f"target_modules: {self.target_modules!r}: give all-linear or a list of module names, "
                              f"e.g. [q_proj, v_proj]")


@dataclass
class HftConfig:
    """Half Fine-Tuning (Hui et al. 2024) for parts with `train: hft` (mmtune.train.hft)."""
    rounds: int = 4  # the run's steps in this many rounds; each round freezes another half of every layer
    seed: int = 0  # which halves: drawn from (seed, round, part)

    def __post_init__(self):
        _check_at_least(self, 1, "rounds")


@dataclass
class QuantConfig:
    """The 4-bit base of parts with `train: qlora` (QLoRA, Dettmers et al. 2023)."""

    quant_type: str = "nf4"  # nf4 (4-bit NormalFloat) | fp4
    double_quant: bool = True  # quantize the per-block scales too (about 0.37 bits a parameter saved)
    compute_dtype: str = "bfloat16"  # float32 | bfloat16 | float16: what the 4-bit weights are dequantized to

    def __post_init__(self):
        _check_choice("quant_type", self.quant_type, ("nf4", "fp4"))
        _check_choice("compute_dtype", self.compute_dtype, ("float32", "bfloat16", "float16"))


WHISPER_PLANS = ("frozen", "lora", "full")
ENCODER_INPUTS = ("padded", "real")


@dataclass
class WhisperModelConfig:
    """Whisper's own encoder-decoder (`WhisperForConditionalGeneration`), the other model kind beside the bridge."""

    path: str | None = None  # a Whisper checkpoint folder or hub id, e.g. openai/whisper-small
    config: dict | None = None  # or a transformers WhisperConfig as a dict (offline tiny models)
    tokenizer: str | None = None  # default: `path`; required with `config`
    encoder: str = "frozen"  # frozen | lora | full
    decoder: str = "lora"  # frozen | lora | full
    language: str | None = "en"  # the decoder prompt's language (rows may give their own `language`); None: none
    task: str = "transcribe"  # transcribe | translate (into English)
    encoder_input: str = "padded"  # padded: every clip padded to the encoder's window (30 s), as Whisper was
    #                                trained; real: the encoder runs on the clip's real frames only (faster)
    lr: float | None = None  # the encoder's and decoder's learning rate (default: train.lr)
    weight_decay: float | None = None  # and weight decay (default: train.weight_decay)

    def __post_init__(self):
        _check_rates(self)
        _check_source(self, "a Whisper model built from `config` needs a Whisper tokenizer folder, e.g. "
                            "examples/whisper_digits/tokenizer")
        _check_choice("encoder", self.encoder, WHISPER_PLANS)
        _check_choice("decoder", self.decoder, WHISPER_PLANS)
        _check_choice("task", self.task, ("transcribe", "translate"))
        _check_choice("encoder_input", self.encoder_input, ENCODER_INPUTS)


@dataclass
class ModelConfig:
    llm: LLMConfig | None = None  # the bridge: towers -> projectors -> this causal LLM
    whisper: WhisperModelConfig | None = None  # or Whisper's own encoder-decoder
    audio: TowerConfig | None = None
    vision: TowerConfig | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantConfig = field(default_factory=QuantConfig)  # for parts with train: qlora
    hft: HftConfig = field(default_factory=HftConfig)  # for parts with train: hft
    attn_implementation: str = "auto"  # auto | flash_attention_2 | varlen | sdpa | eager
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights of the base models
    init_seed: int = 0  # seed for parts built from a config (deterministic rebuilds)
    init_from: str | None = None  # a previous stage's checkpoint folder: start from its weights

    def __post_init__(self):
        _check_choice("attn_implementation", self.attn_implementation,
                      ("auto", "flash_attention_2", "varlen", "sdpa", "eager"))
        _check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if (self.llm is None) == (self.whisper is None):
            raise ConfigError("llm: give exactly one of model.llm (a causal LLM, with towers bridged into it) or "
                              "model.whisper (Whisper's own encoder-decoder)" + (", not both" if self.llm else ""))
        if self.vision is not None and self.vision.encoder_input != "real":
            raise ConfigError("vision.encoder_input: padded encoder input is for the audio tower (model.audio)")
        if self.whisper is not None and (self.audio or self.vision):
            raise ConfigError("whisper: a Whisper model has its own encoder; remove model.audio / model.vision "
                              "(they belong to the bridge, model.llm)")

    @property
    def kind(self) -> str:
        """"bridge" (towers + projectors + a causal LLM) or "whisper" (the encoder-decoder)."""
        return "whisper" if self.whisper is not None else "bridge"


@dataclass
class AugmentConfig:
    """Training-only audio augmentation; everything off by default."""

    spec_augment: bool = False
    freq_mask: int = 15  # max mel bins masked per mask
    time_mask: int = 50  # max frames masked per mask
    num_masks: int = 2
    speed: list | None = None  # e.g. [0.9, 1.0, 1.1]
    noise_snr_db: float | list | None = None  # white noise at this SNR (dB), or [lo, hi]: drawn per clip
    noise_p: float = 1.0  # probability that a clip gets noise (with noise_snr_db)
    reverb_p: float = 0.0  # probability that a clip is reverberated by a synthetic room
    reverb_rt60: list = field(default_factory=lambda: [0.2, 0.8])  # s, [lo, hi]: the room's reverberation time
    band_limit_p: float = 0.0  # probability that a clip is band-limited
    band_limit_rates: list = field(default_factory=lambda: [8000])  # Hz: passed through one of these rates
    gain_db: list | None = None  # [lo, hi] dB: a louder or quieter microphone, drawn per clip, e.g. [-10, 10]
    gain_p: float = 1.0  # probability that a clip's level is changed (with gain_db)
    vtlp: list | None = None  # [lo, hi]: vocal tract length warp factor drawn per clip, e.g. [0.9, 1.1]
    vtlp_p: float = 1.0  # probability that a clip is warped (with vtlp)
    channel_eq_db: float | None = None  # a random smooth frequency response of up to this many dB, e.g. 6
    channel_eq_p: float = 1.0  # probability that a clip gets one (with channel_eq_db)

    def __post_init__(self):
        _check_at_least(self, 0, "freq_mask", "time_mask", "num_masks")
        if self.speed is not None and not (self.speed and all(isinstance(s, (int, float)) and 0.5 <= s <= 2.0
                                                              for s in self.speed)):
            raise ConfigError(f"speed: {self.speed!r}: give speed factors between 0.5 and 2.0, e.g. [0.9, 1.0, 1.1]")
        for key in ("noise_p", "reverb_p", "band_limit_p", "gain_p", "vtlp_p", "channel_eq_p"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not a probability in [0, 1]")
        for key in ("noise_snr_db", "reverb_rt60", "gain_db"):
            value = getattr(self, key)
            if isinstance(value, list) and not (len(value) == 2 and float(value[0]) <= float(value[1])):
                raise ConfigError(f"{key}: {value!r} is not a range [lo, hi] with lo <= hi")
        if self.vtlp is not None and not (isinstance(self.vtlp, list) and len(self.vtlp) == 2
                                          and 0.5 <= float(self.vtlp[0]) <= float(self.vtlp[1]) <= 2.0):
            raise ConfigError(f"vtlp: {self.vtlp!r}: give a range [lo, hi] of warp factors in [0.5, 2.0], e.g. [0.9, 1.1]")
        if self.channel_eq_db is not None and not 0 <= float(self.channel_eq_db) <= 40:
            raise ConfigError(f"channel_eq_db: {self.channel_eq_db!r}: give the largest gain in dB, in [0, 40], e.g. 6")
        if float(min(self.reverb_rt60)) <= 0:
            raise ConfigError(f"reverb_rt60: {self.reverb_rt60!r}: reverberation times are > 0 s")
        if not self.band_limit_rates or not all(0 < float(r) < 16000 for r in self.band_limit_rates):
            raise ConfigError(f"band_limit_rates: {self.band_limit_rates!r}: give rates in (0, 16000) Hz, "
                              f"e.g. [8000] for telephone audio")


@dataclass
class DataConfig:
    train: str | None = None  # JSONL or LLaVA .json manifest, .parquet/.arrow files, a save_to_disk folder, .tar shards
    eval: str | None = None
    columns: dict | None = None  # datasets sources: manifest key -> column, e.g. {text: sentence}
    num_workers: int = 2  # DataLoader worker processes that decode and encode (0: in the main process)
    prefetch: int = 2  # batches each worker prepares ahead
    shard_window: int = 8  # tar shards: shards whose samples are shuffled and batched together, in turn
    instruction: str = "Transcribe the audio."  # user prompt for the ASR shorthand {"audio", "text"}
    system: str | None = None
    max_length: int = 2048  # tokens per sample, placeholders included
    max_audio_seconds: float = 600.0  # longest clip accepted (encoded in windows of model.audio.window_seconds)
    truncation: str = "drop"  # drop | text: over-long samples are dropped or cut in text only
    train_on: str = "all"  # all | last: which assistant turns are supervised
    on_bad_sample: str = "error"  # error | skip
    special_tokens: str = "error"  # error | text: text holding a tokenizer's control token is refused, or kept as text
    batching: str = "padded"  # padded | packed
    batch_size: int = 8  # samples per batch (padded without a token budget)
    max_tokens_per_batch: int | None = None  # token budget: best-fit packing / length batching
    group_by_length: bool = True
    image_resize: str = "crop"  # crop (CLIP) | pad (LLaVA pad-to-square)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        _check_choice("truncation", self.truncation, ("drop", "text"))
        _check_choice("train_on", self.train_on, ("all", "last"))
        _check_choice("on_bad_sample", self.on_bad_sample, ("error", "skip"))
        _check_choice("special_tokens", self.special_tokens, ("error", "text"))
        _check_at_least(self, 1, "max_length")
        _check_at_least(self, 1, "max_tokens_per_batch", optional=True)
        _check_choice("batching", self.batching, ("padded", "packed"))
        _check_choice("image_resize", self.image_resize, ("crop", "pad"))
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not float(self.max_audio_seconds) > 0:
            raise ConfigError(f"max_audio_seconds: must be > 0, got {self.max_audio_seconds}")
        if self.shard_window < 1:
            raise ConfigError(f"shard_window: must be >= 1, got {self.shard_window}")
        if self.num_workers < 0 or self.prefetch < 1:
            raise ConfigError(f"num_workers must be >= 0 and prefetch >= 1, got {self.num_workers} and {self.prefetch}")
        for key in self.columns or {}:
            if key not in ("audio", "text", "instruction", "language", "image", "conversations", "messages"):
                raise ConfigError(f"columns: {key!r} is not a manifest key; map audio, text, instruction, language, "
                                  f"image, conversations or messages to the dataset's column names")


@dataclass
class TrainConfig:
    output_dir: str = "runs/mmtune"
    max_steps: int | None = None  # optimizer steps (100 when epochs is not given either)
    epochs: float | None = None  # passes over the training data instead of max_steps (0.5 and 2.5 work too)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16 (used where the device supports it)
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 0  # 0: save only at the end
    keep_last: int = 2
    seed: int = 0
    resume: str | None = None  # auto | PATH
    cpu_threads: int | None = None  # torch intra-op threads on the CPU; None: torch's default (all cores)
    best_metric: str | None = None  # keep the checkpoint with the best eval value: loss/wer/cer lower, accuracy higher
    early_stopping_patience: int | None = None  # stop after this many evaluations without a better best_metric
    final: str | None = None  # what final/ holds: best | last (default: best when best_metric is set, else last)
    overwrite: bool = False  # start afresh in an output_dir holding another run: its checkpoints and records go first
    fused_optimizer: bool = False  # torch's fused AdamW (one kernel a step; 5x faster on a CPU, other rounding)
    fsdp: bool = False  # several processes: shard parameters, gradients, optimizer state (FSDP2, mmtune.train.fsdp)

    def __post_init__(self):
        _check_choice("schedule", self.schedule, ("cosine", "linear", "constant"))
        _check_choice("mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        _check_above(self, "lr", 0)
        _check_at_least(self, 0, "weight_decay", "warmup_steps", "max_grad_norm", "eval_every", "save_every")
        _check_at_least(self, 1, "log_every", "keep_last")
        _check_at_least(self, 1, "cpu_threads", optional=True)
        if self.resume is not None and self.overwrite:
            raise ConfigError("overwrite and resume are both set: resume continues the run in output_dir, overwrite "
                              "discards it; keep one")
        if self.epochs is not None:
            if self.max_steps is not None:
                raise ConfigError(f"epochs and max_steps are both set ({self.epochs} and {self.max_steps}); keep one, "
                                  f"e.g. override max_steps=null")
            if self.epochs <= 0:
                raise ConfigError(f"epochs: must be > 0, got {self.epochs}")
        elif self.max_steps is None:
            self.max_steps = DEFAULT_MAX_STEPS
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.best_metric is not None:
            _check_choice("best_metric", self.best_metric, EVAL_METRICS)
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ConfigError(f"early_stopping_patience: must be >= 1, got {self.early_stopping_patience}")
            if self.best_metric is None or not self.eval_every:
                raise ConfigError("early_stopping_patience: needs best_metric (what must improve) and eval_every > 0 "
                                  "(how often it is measured), e.g. best_metric: wer, eval_every: 500")
        if self.final is not None:
            _check_choice("final", self.final, ("best", "last"))
            if self.final == "best" and self.best_metric is None:
                raise ConfigError("final: best needs best_metric, the eval metric that decides which is best")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum: must be >= 1, got {self.grad_accum}")


@dataclass
class EvalConfig:
    max_new_tokens: int = 32
    max_samples: int | None = None  # evaluate on the first N eval rows
    batch_size: int = 16
    metrics: list = field(default_factory=lambda: ["loss"])  # loss, wer, cer, accuracy
    group_by: list | None = None  # manifest columns to score by, e.g. [voice]; default: those of GROUP_COLUMNS present
    normalizer: str = "mmtune"  # text normalization before WER/CER: mmtune | whisper_english | whisper_basic
    num_beams: int = 1  # 1: greedy generation; more: beam search

    def __post_init__(self):
        _check_at_least(self, 1, "max_new_tokens", "batch_size", "num_beams")
        _check_choice("normalizer", self.normalizer, NORMALIZERS)
        _check_at_least(self, 1, "max_samples", optional=True)
        unknown = [m for m in self.metrics if m not in EVAL_METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"metrics: {unknown or self.metrics!r}: choose from {', '.join(EVAL_METRICS)}, "
                              f"e.g. [loss, wer]")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    base_dir: str = "."  # folder of the YAML file; relative paths in it resolve here

    def __post_init__(self):
        if self.model.kind == "whisper" and self.data.batching != "padded":
            raise ConfigError("data.batching: a Whisper model takes padded batches (its decoder attends to one clip "
                              "per row); set data.batching: padded")
        best = self.train.best_metric
        if best is not None and best not in self.eval.metrics:
            raise ConfigError(f"train.best_metric: {best!r} is not measured; add it to eval.metrics "
                              f"(now {list(self.eval.metrics)})")


# top-level short forms of common overrides: `mmtune train cfg.yaml max_steps=2`
SHORT_KEYS = {"output_dir": "train.output_dir", "max_steps": "train.max_steps", "epochs": "train.epochs",
              "seed": "train.seed", "resume": "train.resume", "lr": "train.lr"}


def _close_match(key: str, choices) -> str:
    """The closest known key name, or ''."""
    match = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return match[0] if match else ""


def _dataclass_type(tp) -> type | None:
    """The dataclass inside `tp` (X, X | None), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(key: str, value: Any, tp) -> Any:
    """Check a YAML value against the field's annotated type, converting int -> float."""
    if value is None:
        return None
    allowed = typing.get_args(tp) if (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union) else (tp,)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in allowed and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    for t in allowed:
        base = typing.get_origin(t) or t
        if t is Any or (isinstance(base, type) and isinstance(value, base)):
            if base is int and isinstance(value, bool):
                continue
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass `cls` from a dict, failing on unknown keys with a close match."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            alias = KEY_ALIASES.get(key)
            match = alias if alias and alias.split(" ")[0].rstrip(":") in names else _close_match(key, names)
            hint = f"{prefix}{match}" if match else alias
            raise ConfigError(f"unknown key {full!r}" + (f" (did you mean {hint}?)" if hint else ""))
        sub = _dataclass_type(hints[key])
        if sub is not None and (value is not None or hints[key] is sub):
            kwargs[key] = from_dict(sub, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, hints[key])
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix else str(e)) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


# a run's length is one of these: an override of one replaces the file's other (max_steps=2 on an epochs config)
RUN_LENGTH_KEYS = ("train.max_steps", "train.epochs")


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML: 2, 1e-3, true, [a, b])."""
    given = set()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: write it as key.sub=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        key = SHORT_KEYS.get(key.strip(), key.strip())
        _set_dotted(tree, key, _yaml(raw, f"override {item!r}") if raw != "" else None)
        given.add(key)
    for key, other in (RUN_LENGTH_KEYS, RUN_LENGTH_KEYS[::-1]):
        if key in given and other not in given and isinstance(tree.get("train"), dict):
            tree["train"].pop(other.split(".", 1)[1], None)
    return tree


def _yaml(text: str, where: str) -> Any:
    """Parse YAML; a syntax error names `where`, the line and the column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}"
                          + (" (quote a value that holds ': ' or starts with [ { * &)" if "override" in where
                             else "")) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({e.__class__.__name__}: {e})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    tree: dict = {}
    base_dir = "."
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} " + ("is a folder: give the YAML file in it" if path.is_dir()
                                                        else "does not exist"))
        tree = _yaml(_read_text(path), str(path)) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, train, eval)")
        base_dir = str(path.resolve().parent)
    tree = apply_overrides(tree, overrides or [])
    tree.setdefault("base_dir", base_dir)
    _start_from_native(tree)
    cfg = from_dict(Config, tree)
    _resolve_paths(cfg)
    return cfg


def _start_from_native(tree: dict) -> None:
    """model.init_from naming a LLaVA / Voxtral folder: the parts the file leaves out come from the folder."""
    model = tree.get("model")
    if isinstance(model, dict) and isinstance(model.get("init_from"), str):
        given = Path(model["init_from"]).expanduser()
        folder = given if given.is_absolute() else Path(tree["base_dir"]) / given
        if native_type(folder) is not None:
            model["init_from"] = str(folder)
            fill_native_parts(tree)


def _resolve_paths(cfg: Config) -> None:
    """Relative paths in the file resolve against the file's folder (hub ids stay as they are); a model
    or tokenizer path that can only be local (not a hub id) must exist."""
    m = cfg.model
    for part in (m.llm, m.whisper):
        if part is not None:
            part.path, part.tokenizer = resolve_path(cfg, part.path), resolve_path(cfg, part.tokenizer)
    m.init_from = resolve_path(cfg, m.init_from)
    for tower in (m.audio, m.vision):
        if tower is not None:
            tower.path = resolve_path(cfg, tower.path)
    cfg.data.train, cfg.data.eval = resolve_path(cfg, cfg.data.train), resolve_path(cfg, cfg.data.eval)
    # (model.init_from may be written by an earlier stage still to run: the model build checks it)
    for key, value in model_sources(m).items():
        if not _could_be_hub_id(value) and not Path(value).exists():
            raise ConfigError(f"{key}: {value} does not exist (relative paths resolve against the config file's "
                              f"folder, {cfg.base_dir}); give a local folder, or a hub id such as Qwen/Qwen2.5-0.5B")


def model_sources(m: ModelConfig) -> dict[str, str]:
    """{config key: local path or hub id} of every part given by `path`, the tokenizer too."""
    sources = {"model.llm.path": m.llm and m.llm.path, "model.llm.tokenizer": m.llm and m.llm.tokenizer,
               "model.whisper.path": m.whisper and m.whisper.path,
               "model.whisper.tokenizer": m.whisper and m.whisper.tokenizer,
               "model.audio.path": m.audio and m.audio.path, "model.vision.path": m.vision and m.vision.path}
    return {k: v for k, v in sources.items() if v}


def _could_be_hub_id(value: str) -> bool:
    """'name' or 'org/name': no leading / . ~, at most one slash."""
    return not value.startswith(("/", ".", "~")) and value.count("/") <= 1 and "\\" not in value


def resolve_path(cfg: Config, value: str | None) -> str | None:
    """A path from the config: the config file's folder first, then as given (a hub id stays a hub id)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() else Path(cfg.base_dir) / p
    return str(candidate) if candidate.exists() else value


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
