"""Samples -> Examples: load media, compute features, render the chat, apply the bad-input policy.

    spec = MediaSpec.from_config(cfg.model, cfg.data)
    dataset = MultimodalDataset.from_manifest(cfg.data.train, tokenizer, spec, cfg.data, train=True)

Every sample is encoded once when the dataset is built (features are the heavy work and are
computed a single time, with a progress bar); bad rows raise a DataError naming the row, or with
`on_bad_sample: skip` are counted and reported. Training-time augmentation re-draws per access.
"""

import logging
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import AutoConfig

from mmtune.audio.augment import add_noise, spec_augment, speed_perturb
from mmtune.audio.features import log_mel_spectrogram
from mmtune.audio.io import SAMPLE_RATE, load_audio
from mmtune.config import DataConfig, ModelConfig
from mmtune.data.encode import render_conversation, render_prompt, truncate
from mmtune.data.example import IGNORE_INDEX, Example
from mmtune.data.formats import Sample, read_manifest
from mmtune.errors import DataError, MediaError
from mmtune.model.placeholders import PLACEHOLDERS, num_audio_tokens, num_image_tokens
from mmtune.vision.io import load_image
from mmtune.vision.preprocess import ImageSpec, preprocess_image

log = logging.getLogger("mmtune")
MAX_AUDIO_FRAMES = 3000  # mel frames (30 s), the longest clip a Whisper encoder takes


@dataclass
class MediaSpec:
    """What the model's towers need from the data step (read from configs, no weights loaded)."""

    n_mels: int | None = None  # None: the model has no audio tower
    audio_stack: int = 1
    image: ImageSpec | None = None  # None: the model has no vision tower
    image_tokens: int = 0
    image_resize: str = "crop"

    @classmethod
    def from_config(cls, model: ModelConfig, data: DataConfig) -> "MediaSpec":
        spec = cls(image_resize=data.image_resize)
        if model.audio is not None:
            audio = model.audio.config or AutoConfig.from_pretrained(model.audio.path).to_dict()
            spec.n_mels = int(audio.get("num_mel_bins", 80))
            spec.audio_stack = model.audio.projector.stack
        if model.vision is not None:
            vision = model.vision.config or _vision_config(model.vision.path)
            default = ImageSpec.siglip if "siglip" in vision.get("model_type", "") else ImageSpec.clip
            size = int(vision["image_size"])
            spec.image = ImageSpec.from_pretrained(model.vision.path, default(size)) if model.vision.path else default(size)
            spec.image_tokens = num_image_tokens(size, int(vision["patch_size"]))
        return spec


def _vision_config(path: str) -> dict:
    config = AutoConfig.from_pretrained(path)
    return (getattr(config, "vision_config", None) or config).to_dict()


class SampleEncoder:
    """One Sample -> one Example; raises DataError naming the sample's row."""

    def __init__(self, tokenizer, spec: MediaSpec, data: DataConfig, train: bool = False, seed: int = 0):
        self.tokenizer = tokenizer
        self.spec = spec
        self.data = data
        self.train = train
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.speed: float | None = None  # a fixed speed factor (set while caching speed variants)
        self.placeholder_ids = {tokenizer.convert_tokens_to_ids(t): m for m, t in PLACEHOLDERS.items()}
        self.truncated: set[str] = set()  # sources of samples cut to max_length in text (truncation: text)

    def __call__(self, sample: Sample) -> Example:
        with _named(sample.source):
            return self._encode(sample)

    def prompt(self, sample: Sample) -> Example:
        """The sample as a generation prompt (its last assistant turn, if any, left out); labels empty."""
        messages = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
        with _named(sample.source):
            audio, images, counts = self._media(messages)
            ids = render_prompt(self.tokenizer, messages, counts)
        return Example(ids, torch.full_like(ids, IGNORE_INDEX), audio, images, sample.source)

    def _media(self, messages: list[dict]):
        parts = [p for m in messages for p in m["content"]]
        audio = [self.audio_features(p["path"]) for p in parts if p["type"] == "audio"]
        images = [self.image_pixels(p["path"]) for p in parts if p["type"] == "image"]
        counts = {"audio": [num_audio_tokens(a.shape[-1], self.spec.audio_stack) for a in audio],
                  "image": [self.spec.image_tokens] * len(images)}
        return audio, images, counts

    def _encode(self, sample: Sample) -> Example:
        audio, images, counts = self._media(sample.messages)
        ids, labels = render_conversation(self.tokenizer, sample.messages, counts, self.data.train_on)
        if labels.ne(IGNORE_INDEX).sum() == 0:
            raise DataError(sample.source, "no supervised token: the assistant answers rendered to nothing")
        if len(ids) > self.data.max_length:
            ids, labels, audio, images = self._truncate(sample, ids, labels, audio, images)
        return Example(ids, labels, audio, images, sample.source)

    def _truncate(self, sample, ids, labels, audio, images):
        reason = (f"over-length: {len(ids)} tokens (media included) > data.max_length={self.data.max_length}; "
                  f"raise max_length or shorten the sample")
        if self.data.truncation == "drop":
            raise DataError(sample.source, reason)
        cut = truncate(ids, labels, self.data.max_length, set(self.placeholder_ids))
        if cut is None:
            raise DataError(sample.source, reason + " (truncating the text would leave no supervised token)")
        ids, labels, runs = cut
        self.truncated.add(sample.source)
        by_modality = {self.placeholder_ids[pid]: n for pid, n in runs.items()}
        return ids, labels, audio[: by_modality["audio"]], images[: by_modality["image"]]

    def audio_features(self, path: str) -> torch.Tensor:
        """A clip -> log-mel (n_mels, frames), augmented when training and configured."""
        if self.spec.n_mels is None:
            raise DataError("", "the sample has audio but the model has no audio tower: add model.audio")
        wave = load_audio(path, SAMPLE_RATE)
        aug = self.data.augment
        if self.speed is not None:
            wave = speed_perturb(wave, self.speed)
        elif self.train and aug.speed:
            wave = speed_perturb(wave, float(self.rng.choice(aug.speed)))
        if self.train and aug.noise_snr_db is not None:
            wave = add_noise(wave, aug.noise_snr_db, self.rng)
        features = log_mel_spectrogram(wave, n_mels=self.spec.n_mels)  # (n_mels, frames)
        if features.shape[-1] == 0:
            raise MediaError(f"audio file {path} is shorter than one 10 ms frame")
        if features.shape[-1] > MAX_AUDIO_FRAMES:
            raise MediaError(f"audio file {path} is {features.shape[-1] / 100:.1f} s long; the encoder takes at "
                             f"most 30 s: split it into shorter clips")
        return features

    def mask(self, example: Example) -> Example:
        """SpecAugment on a training example's clips (a fresh draw per call)."""
        aug = self.data.augment
        audio = [spec_augment(a, aug.num_masks, aug.freq_mask, aug.time_mask, self.generator) for a in example.audio]
        return Example(example.input_ids, example.labels, audio, example.images, example.source)

    def image_pixels(self, path: str) -> torch.Tensor:
        if self.spec.image is None:
            raise DataError("", "the sample has an image but the model has no vision tower: add model.vision")
        return preprocess_image(load_image(path), self.spec.image, self.spec.image_resize)  # (3, S, S)


@contextmanager
def _named(source: str):
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


class MultimodalDataset(Dataset):
    """Encoded examples of one manifest, with the counts of what was skipped and why."""

    def __init__(self, samples: list[Sample], encoder: SampleEncoder, on_bad: str = "error",
                 skipped: list[DataError] | None = None, progress: bool = True, desc: str = "encoding"):
        self.samples: list[Sample] = []
        self.examples: list[Example] = []
        self.encoder = encoder
        self.skipped: list[DataError] = list(skipped or [])
        with one_thread():
            for sample in tqdm(samples, desc=desc, disable=not progress, unit="row", leave=False):
                try:
                    example = encoder(sample)
                except DataError as e:
                    if on_bad == "error":
                        raise
                    self.skipped.append(e)
                    continue
                self.samples.append(sample)
                self.examples.append(example)
        if not self.examples:
            raise DataError(desc, f"no usable sample ({len(self.skipped)} skipped); run `mmtune data check`")
        augment = encoder.data.augment
        # speed perturbation without noise: each factor's features are computed once, then drawn per access
        self.variants = self._speed_variants(augment.speed, progress) if encoder.train and augment.speed and \
            augment.noise_snr_db is None else {}
        self.redraw = encoder.train and augment.noise_snr_db is not None  # waveform noise: re-encode per access
        self.masking = encoder.train and augment.spec_augment

    def _speed_variants(self, factors: list, progress: bool) -> dict[float, list[Example]]:
        variants = {}
        with one_thread():
            for factor in sorted({float(f) for f in factors}):
                if factor == 1.0:
                    variants[factor] = self.examples
                    continue
                self.encoder.speed = factor
                variants[factor] = [self.encoder(s) for s in tqdm(self.samples, desc=f"speed {factor}",
                                                                    disable=not progress, unit="row", leave=False)]
        self.encoder.speed = None
        return variants

    @classmethod
    def from_manifest(cls, path: str, tokenizer, spec: MediaSpec, data: DataConfig, train: bool = False,
                      seed: int = 0, progress: bool = True) -> "MultimodalDataset":
        samples, bad = read_manifest(path, data.instruction, data.system, data.on_bad_sample)
        encoder = SampleEncoder(tokenizer, spec, data, train=train, seed=seed)
        return cls(samples, encoder, data.on_bad_sample, bad, progress, desc=f"encoding {path}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        if self.redraw:
            example = self.encoder(self.samples[i])
        elif self.variants:
            factors = sorted(self.variants)
            example = self.variants[factors[int(self.encoder.rng.integers(len(factors)))]][i]
        else:
            example = self.examples[i]
        return self.encoder.mask(example) if self.masking else example

    @property
    def lengths(self) -> list[int]:
        """Tokens per example (the longest speed variant, so token budgets hold for every draw)."""
        if self.variants:
            return [max(len(v[i]) for v in self.variants.values()) for i in range(len(self.examples))]
        return [len(e) for e in self.examples]

    def stats(self) -> dict:
        """Rows kept, skipped (by kind of reason) and truncated, supervised token fraction, modality counts."""
        tokens = sum(self.lengths)
        supervised = sum(e.num_supervised for e in self.examples)
        reasons = Counter(reason_kind(e.reason) for e in self.skipped)
        return {"rows": len(self.examples), "skipped": len(self.skipped), "skipped_by_reason": dict(reasons),
                "truncated": len(self.encoder.truncated), "tokens": tokens,
                "supervised_fraction": supervised / max(tokens, 1),
                "audio_clips": sum(len(e.audio) for e in self.examples),
                "images": sum(len(e.images) for e in self.examples)}


def reason_kind(reason: str) -> str:
    """A skip reason without what is particular to its row: the text before the first ':', ';' or '(',
    file paths as <file> and numbers as N (not those in names such as UTF-8).
        reason_kind("cannot decode audio /data/a.flac: Error opening ...")  # "cannot decode audio <file>"
    """
    head = re.split(r"[:;(]", reason, maxsplit=1)[0]
    head = re.sub(r"\S*[/\\]\S*", "<file>", head)
    return re.sub(r"(?<![\w-])\d+", "N", head).strip()
