"""One Sample -> one Example: load media, features, augmentation, the chat rendered with labels.

    spec = MediaSpec.from_config(cfg.model, cfg.data)
    encoder = SampleEncoder(tokenizer, spec, cfg.data, train=True, seed=cfg.train.seed)
    example = encoder(sample, epoch=0, row=17)     # decoded, augmented, tokenized
    length = encoder.measure(sample)                # the same token count from file headers, no decode

Training draws (speed factor, room, noise, band limit, SpecAugment masks) derive from (seed, epoch, row) alone, so
an example is the same in any DataLoader worker, in any process, and after a resume: the encoder
keeps no random state, and `state_dict()` is just the seed the draws derive from.
Errors are DataErrors naming the sample's row.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig

from mmtune.audio.augment import (add_noise, band_limit, channel_eq, gain, reverberate, spec_augment, speed_perturb,
                                  vtlp)
from mmtune.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, MAX_FRAMES, padded_log_mel, windowed_log_mel
from mmtune.audio.io import SAMPLE_RATE, check_duration, load_audio, num_samples
from mmtune.config import DataConfig, ModelConfig
from mmtune.data.chat import SpecialTokens, render_conversation, render_prompt, truncate
from mmtune.data.example import IGNORE_INDEX, Example
from mmtune.data.formats import Sample
from mmtune.data.transcript import TranscriptSpec, prompt_ids, render_transcript, transcript_parts
from mmtune.errors import DataError, MediaError
from mmtune.model.placeholders import PLACEHOLDERS, num_audio_tokens, num_image_tokens, window_frames
from mmtune.vision.io import check_readable, image_size, load_image
from mmtune.vision.preprocess import ImageSpec
from mmtune.vision.tiles import image_views, num_views


@dataclass
class MediaSpec:
    """What the model's towers need from the data step (read from configs, no weights loaded)."""

    n_mels: int | None = None  # None: the model has no audio tower
    audio_stack: int = 1
    audio_window: int = MAX_FRAMES  # mel frames per encoder window (clips longer than this are cut)
    image: ImageSpec | None = None  # None: the model has no vision tower
    image_tokens: int = 0  # per view (the whole image, or one tile or the overview)
    image_resize: str = "crop"
    max_tiles: int = 1  # > 1: large images become tiles + an overview (mmtune.vision.tiles)
    audio_pad_frames: int | None = None  # padded encoder input: every clip fills one window (clip + silence)
    transcript: TranscriptSpec | None = None  # Whisper's encoder-decoder: rows are a clip and its decoder tokens

    @classmethod
    def from_config(cls, model: ModelConfig, data: DataConfig) -> "MediaSpec":
        spec = cls(image_resize=data.image_resize)
        if model.whisper is not None:
            w = model.whisper
            config = w.config or AutoConfig.from_pretrained(w.path).to_dict()
            spec.n_mels = int(config.get("num_mel_bins", 80))
            spec.audio_window = 2 * int(config.get("max_source_positions", 1500))  # one window: the encoder's input
            spec.transcript = TranscriptSpec(w.language, w.task,
                                             max_tokens=int(config.get("max_target_positions", 448)))
            spec.audio_pad_frames = spec.audio_window if w.encoder_input == "padded" else None
        if model.audio is not None:
            audio = model.audio.config or AutoConfig.from_pretrained(model.audio.path).to_dict()
            spec.n_mels = int(audio.get("num_mel_bins", 80))
            spec.audio_stack = model.audio.projector.stack
            spec.audio_window = window_frames(model.audio.window_seconds, int(audio.get("max_source_positions", 1500)))
            spec.audio_pad_frames = spec.audio_window if model.audio.encoder_input == "padded" else None
        if model.vision is not None:
            vision = model.vision.config or _vision_config(model.vision.path)
            default = ImageSpec.siglip if "siglip" in vision.get("model_type", "") else ImageSpec.clip
            size = int(vision["image_size"])
            spec.image = ImageSpec.from_pretrained(model.vision.path, default(size)) if model.vision.path else default(size)
            spec.image_tokens = num_image_tokens(size, int(vision["patch_size"]))
            spec.max_tiles = model.vision.max_tiles
        return spec


def _vision_config(path: str) -> dict:
    config = AutoConfig.from_pretrained(path)
    return (getattr(config, "vision_config", None) or config).to_dict()


@dataclass
class Measure:
    """A sample's sizes as the index keeps them, from headers (no decode)."""

    tokens: int  # input length, placeholders expanded (the longest speed variant)
    supervised: int  # supervised tokens
    audio_seconds: float  # summed clip durations at speed 1.0
    audio: int  # clips
    images: int
    truncated: bool  # cut to data.max_length in text (truncation: text)


class SampleEncoder:
    """One Sample -> one Example; raises DataError naming the sample's row."""

    def __init__(self, tokenizer, spec: MediaSpec, data: DataConfig, train: bool = False, seed: int = 0):
        self.tokenizer = tokenizer
        self.spec = spec
        self.data = data
        self.train = train
        self.seed = seed
        self.placeholder_ids = {tokenizer.convert_tokens_to_ids(t): m for m, t in PLACEHOLDERS.items()}
        self.special = SpecialTokens(tokenizer, data.special_tokens)  # one regex over every row's text
        for key in ("instruction", "system"):  # config text every ASR row gets: refused once, here
            if getattr(data, key):
                self.special.text(getattr(data, key), f"data.{key}")
        aug = data.augment
        self.speeds = sorted({float(f) for f in aug.speed}) if train and aug.speed else [1.0]

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])

    def __call__(self, sample: Sample, epoch: int = 0, row: int = 0) -> Example:
        """The training (or eval) example; a training draw's randomness derives from (seed, epoch, row)."""
        rng = np.random.default_rng([self.seed, epoch, row]) if self.train else None
        with named(sample.source):
            audio = [self.audio_features(p, rng) for p in _parts(sample.messages, "audio")]
            images = [self.image_pixels(p) for p in _parts(sample.messages, "image")]
            counts = self._counts([a.shape[-1] for a in audio], [im.shape[0] for im in images])
            ids, labels, runs, _ = self._render(sample, counts)
        if self.train and self.data.augment.spec_augment:
            audio = self._mask(audio, rng)
        return Example(ids, labels, audio[: runs["audio"]], images[: runs["image"]], sample.source)

    def measure(self, sample: Sample) -> Measure:
        """The sizes `__call__` gives, from file headers and the tokenizer alone (no media decoded)."""
        with named(sample.source):
            clips = [self._clip_samples(p) for p in _parts(sample.messages, "audio")]
            views = [self._image_views(part) for part in _parts(sample.messages, "image")]
            frames = [self.spec.audio_pad_frames or max(_frames(n, f) for f in self.usable_speeds(n)) for n in clips]
            counts = self._counts(frames, views)
            ids, labels, runs, truncated = self._render(sample, counts)
        return Measure(len(ids), int((labels != IGNORE_INDEX).sum()), sum(clips) / SAMPLE_RATE, runs["audio"],
                       runs["image"], truncated)

    def prompt(self, sample: Sample) -> Example:
        """The sample as a generation prompt (its last assistant turn, if any, left out); labels empty."""
        if self.spec.transcript is not None:
            return self._transcript_prompt(sample)
        messages = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
        with named(sample.source):
            audio = [self.audio_features(p) for p in _parts(messages, "audio")]
            images = [self.image_pixels(p) for p in _parts(messages, "image")]
            counts = self._counts([a.shape[-1] for a in audio], [im.shape[0] for im in images])
            ids = render_prompt(self.tokenizer, messages, counts, self.special)
        return Example(ids, torch.full_like(ids, IGNORE_INDEX), audio, images, sample.source)

    def _transcript_prompt(self, sample: Sample) -> Example:
        """Whisper's prompt: the row's clip and its decoder prompt tokens."""
        with named(sample.source):
            clip, _ = transcript_parts(sample)
            ids = torch.tensor(prompt_ids(self.tokenizer, sample, self.spec.transcript), dtype=torch.long)
            audio = [self.audio_features(clip)]
        return Example(ids, torch.full_like(ids, IGNORE_INDEX), audio, [], sample.source)

    def _counts(self, audio_frames: list[int], image_views: list[int]) -> dict[str, list[int]]:
        """Placeholder tokens of each clip (from its mel frames) and each image (from its views)."""
        return {"audio": [num_audio_tokens(t, self.spec.audio_stack, self.spec.audio_window) for t in audio_frames],
                "image": [self.spec.image_tokens * v for v in image_views]}

    def _render(self, sample: Sample, counts: dict):
        """-> input_ids (T,), labels (T,), media kept {"audio": k, "image": m}, whether the text was cut."""
        if self.spec.transcript is not None:
            return self._render_transcript(sample)
        ids, labels = render_conversation(self.tokenizer, sample.messages, counts, self.data.train_on,
                                          self.special)
        if labels.ne(IGNORE_INDEX).sum() == 0:
            raise DataError("", "no supervised token: the assistant answers rendered to nothing")
        if len(ids) <= self.data.max_length:
            return ids, labels, {m: len(c) for m, c in counts.items()}, False
        reason = (f"over-length: {len(ids)} tokens (media included) > data.max_length={self.data.max_length}; "
                  f"raise max_length or shorten the sample")
        if self.data.truncation == "drop":
            raise DataError("", reason)
        cut = truncate(ids, labels, self.data.max_length, set(self.placeholder_ids))
        if cut is None:
            raise DataError("", reason + " (truncating the text would leave no supervised token)")
        ids, labels, runs = cut
        return ids, labels, {self.placeholder_ids[pid]: n for pid, n in runs.items()}, True

    def _render_transcript(self, sample: Sample):
        """Whisper's decoder tokens; a transcript over data.max_length is dropped (it is never cut)."""
        ids, labels = render_transcript(self.tokenizer, sample, self.spec.transcript, self.special)
        limit = min(self.data.max_length, self.spec.transcript.max_tokens)
        if len(ids) > limit:
            raise DataError("", f"over-length: {len(ids)} decoder tokens > {limit} (data.max_length, at most the "
                                f"{self.spec.transcript.max_tokens} positions of Whisper's decoder); shorten the "
                                f"transcript")
        return ids, labels, {"audio": 1, "image": 0}, False

    def usable_speeds(self, n_samples: int) -> list[float]:
        """Speed factors a clip of n samples may be drawn at: those that keep it within data.max_audio_seconds
        (1.0 always)."""
        fit = [f for f in self.speeds if _frames(n_samples, f) <= self._max_frames]
        return fit or [1.0]

    def audio_features(self, part: dict, rng: np.random.Generator | None = None) -> torch.Tensor:
        """A clip part -> log-mel (n_mels, frames); with `rng` (training) speed and noise are drawn."""
        if self.spec.n_mels is None:
            raise DataError("", "the sample has audio but the model has no audio tower: add model.audio")
        wave = load_audio(part["path"], SAMPLE_RATE, part.get("bytes"), self.data.max_audio_seconds)  # (n,)
        if rng is not None:
            wave = self._augment_wave(wave, rng)
        self._check_frames(part["path"], len(wave) // HOP_LENGTH)
        if self.spec.audio_pad_frames is not None:  # padded input: the clip and silence after it fill the window
            features = padded_log_mel(wave, self.spec.n_mels, self.spec.audio_pad_frames)  # (n_mels, pad)
        else:
            features = windowed_log_mel(wave, self.spec.n_mels, self.spec.audio_window)  # (n_mels, frames)
        return features if rng is None else self._augment_features(features, rng)

    def _augment_features(self, features: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One training draw on the log-mel (n_mels, frames): another vocal tract (vtlp), then another
        microphone (channel_eq); like the waveform steps, only enabled steps draw from `rng`."""
        aug = self.data.augment
        if aug.vtlp is not None and _happens(aug.vtlp_p, rng):
            features = vtlp(features, _draw(aug.vtlp, rng))
        if aug.channel_eq_db is not None and _happens(aug.channel_eq_p, rng):
            features = channel_eq(features, float(aug.channel_eq_db), rng)
        return features

    def _augment_wave(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One training draw of the waveform (n,) at 16 kHz, as a microphone and a room would change it:
        speed, then room reverberation, then noise, then a band limit (the channel), then a gain. Only enabled
        steps draw from `rng`, so turning one on leaves the others' draws of configs without it."""
        aug = self.data.augment
        if len(self.speeds) > 1:
            speeds = self.usable_speeds(len(wave))
            wave = speed_perturb(wave, float(speeds[int(rng.integers(len(speeds)))]))
        if _happens(aug.reverb_p, rng):
            wave = reverberate(wave, _draw(aug.reverb_rt60, rng), rng)
        if aug.noise_snr_db is not None and _happens(aug.noise_p, rng):
            wave = add_noise(wave, _draw(aug.noise_snr_db, rng), rng)
        if _happens(aug.band_limit_p, rng):
            rates = aug.band_limit_rates
            wave = band_limit(wave, float(rates[int(rng.integers(len(rates)))]))
        if aug.gain_db is not None and _happens(aug.gain_p, rng):
            wave = gain(wave, _draw(aug.gain_db, rng))
        return wave

    def _clip_samples(self, part: dict) -> int:
        if self.spec.n_mels is None:
            raise DataError("", "the sample has audio but the model has no audio tower: add model.audio")
        n = num_samples(part["path"], SAMPLE_RATE, part.get("bytes"))
        self._check_frames(part["path"], n // HOP_LENGTH)
        return n

    @property
    def _one_window(self) -> bool:
        """Whether every clip must fit one encoder window: Whisper's encoder-decoder, and padded encoder input."""
        return self.spec.transcript is not None or self.spec.audio_pad_frames is not None

    @property
    def _max_frames(self) -> int:
        """The longest clip in mel frames: data.max_audio_seconds, and the encoder's window where clips fit one."""
        frames = round(float(self.data.max_audio_seconds) * FRAMES_PER_SECOND)
        return min(frames, self.spec.audio_window) if self._one_window else frames

    def _check_frames(self, path: str, frames: int) -> None:
        if frames == 0:
            raise MediaError(f"audio file {path} is shorter than one 10 ms frame")
        window = self.spec.audio_window / FRAMES_PER_SECOND  # s
        if self._one_window and frames > self.spec.audio_window:
            who = ("a Whisper model hears" if self.spec.transcript is not None else
                   "with model.audio.encoder_input: padded the encoder hears")
            raise MediaError(f"audio file {path} is {frames / FRAMES_PER_SECOND:.1f} s long; {who} at most "
                             f"{window:g} s (its encoder's window): cut the recording into shorter clips")
        check_duration(path, frames * HOP_LENGTH, self.data.max_audio_seconds, window)

    def _image_views(self, part: dict) -> int:
        """Tower inputs the image becomes, from its header (read only when tiles are on)."""
        if self.spec.image is None:
            raise DataError("", "the sample has an image but the model has no vision tower: add model.vision")
        if self.spec.max_tiles == 1:
            check_readable(part["path"], part.get("bytes"))
            return 1
        width, height = image_size(part["path"], part.get("bytes"))
        return num_views(width, height, self.spec.max_tiles, self.spec.image.size)

    def _mask(self, audio: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
        """SpecAugment on each clip, from a torch generator seeded by this draw's rng."""
        aug = self.data.augment
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return [spec_augment(a, aug.num_masks, aug.freq_mask, aug.time_mask, generator) for a in audio]

    def image_pixels(self, part: dict) -> torch.Tensor:
        if self.spec.image is None:
            raise DataError("", "the sample has an image but the model has no vision tower: add model.vision")
        image = load_image(part["path"], data=part.get("bytes"))
        return image_views(image, self.spec.image, self.spec.image_resize, self.spec.max_tiles)  # (V, 3, S, S)


def _parts(messages: list[dict], kind: str) -> list[dict]:
    return [p for m in messages for p in m["content"] if p["type"] == kind]


def _frames(n_samples: int, speed: float) -> int:
    """Mel frames of a clip of n samples played `speed` times faster (speed_perturb's length rule)."""
    n = math.ceil(n_samples * SAMPLE_RATE / (SAMPLE_RATE * speed)) if speed != 1.0 else n_samples
    return n // HOP_LENGTH


@contextmanager
def named(source: str):
    """Re-raise a MediaError or DataError from encoding one sample as a DataError naming its row."""
    try:
        yield
    except MediaError as e:
        raise DataError(source, str(e)) from None
    except DataError as e:
        raise DataError(source, e.reason) from None


@contextmanager
def one_thread():
    """Per-clip feature work is many small ops: torch's thread pool costs 10-100x more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _happens(p: float, rng: np.random.Generator) -> bool:
    """A draw with probability p; p 0 and 1 decide without drawing (the stream stays as it was)."""
    return p >= 1.0 or (p > 0.0 and bool(rng.random() < p))


def _draw(value, rng: np.random.Generator) -> float:
    """A number as is, or [lo, hi] drawn uniformly."""
    return float(rng.uniform(float(value[0]), float(value[1]))) if isinstance(value, list) else float(value)
