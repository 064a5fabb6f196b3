"""Image preprocessing for CLIP/SigLIP towers: make a square of the tower's size, then normalize.

Two ways to make the square, both on 8-bit Pillow images so the numbers match the reference:
"crop" is CLIPImageProcessor's (shortest edge to `size`, then the center square);
"pad" is LLaVA's expand2square (pad with the mean colour, keep the whole image), then resize.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmtune.errors import CheckpointError

# Per-channel RGB statistics, on the [0, 1] pixel scale.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_RESAMPLE_BY_CODE = {int(code): name for name, code in RESAMPLE.items()}  # as in HF configs: 3
RESIZE_MODES = ("crop", "pad")
CONFIG_NAME = "preprocessor_config.json"


@dataclass
class ImageSpec:
    """What one vision tower takes: a `size` x `size` RGB square, normalized as (x - mean) / std."""

    size: int  # side of the square input, pixels
    mean: tuple[float, float, float]  # per RGB channel, [0, 1] scale
    std: tuple[float, float, float]  # per RGB channel, [0, 1] scale
    resample: str = "bicubic"  # a key of RESAMPLE

    def __post_init__(self):
        self.mean, self.std = _triple(self.mean, "mean"), _triple(self.std, "std")
        if not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"ImageSpec.size must be a positive int (pixels), got {self.size!r}")
        if min(self.std) <= 0:
            raise ValueError(f"ImageSpec.std must be positive in every channel, got {self.std}")
        if self.resample not in RESAMPLE:
            raise ValueError(
                f"ImageSpec.resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}"
            )

    @classmethod
    def clip(cls, size: int = 224) -> "ImageSpec":
        """OpenAI CLIP's statistics (also those of LLaVA's CLIP ViT-L/14 towers)."""
        return cls(size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    @classmethod
    def siglip(cls, size: int = 224) -> "ImageSpec":
        """SigLIP's statistics: pixels mapped to [-1, 1]."""
        return cls(size, SIGLIP_MEAN, SIGLIP_STD)

    @classmethod
    def from_pretrained(cls, path_or_dir: str | os.PathLike, default: "ImageSpec") -> "ImageSpec":
        """The spec in a local model folder's preprocessor_config.json, else `default`.

        Never downloads: a hub id, or a folder without the file, gives `default`. Keys the file
        lacks (image_mean, image_std, size / crop_size, resample) are taken from `default`.
        """
        path = Path(path_or_dir)
        config = path if path.is_file() else path / CONFIG_NAME
        if not config.is_file():
            return default
        try:
            fields = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {config}: {e}") from e
        return _spec_from_config(fields, default, config)


def preprocess_image(img: Image.Image, spec: ImageSpec, resize: str = "crop") -> torch.Tensor:
    """An RGB image as the tower's input: (3, spec.size, spec.size) float32, normalized.

    resize="crop": shortest edge to spec.size, then the center square (CLIPImageProcessor).
    resize="pad": pad to a square with the mean colour, then resize (LLaVA's expand2square).
    """
    if img.mode != "RGB":
        raise ValueError(f"preprocess_image takes RGB (see load_image), got mode {img.mode}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    resample = RESAMPLE[spec.resample]
    if resize == "crop":
        square = _resize_and_crop(img, spec.size, resample)
    else:
        fill = tuple(int(m * 255) for m in spec.mean)  # LLaVA's background colour, 0..255
        square = _pad_to_square(img, fill).resize((spec.size, spec.size), resample)
    return normalize(square, spec)


def _resize_and_crop(img: Image.Image, size: int, resample) -> Image.Image:
    """Shortest edge to `size` (long edge truncated, as in transformers), then the center square."""
    width, height = img.size
    long = int(size * max(width, height) / min(width, height))
    new_w, new_h = (size, long) if width <= height else (long, size)
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _pad_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """(W, H) -> (S, S) with S = max(W, H): the image centred, the margins filled with `fill`."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square


def normalize(img: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """(S, S) RGB uint8 image -> (3, S, S) float32 tensor of (x / 255 - mean) / std."""
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (S, S, 3) in [0, 1]
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return ((pixels.permute(2, 0, 1) - mean) / std).contiguous()  # (3, S, S)


def _spec_from_config(fields: dict, default: ImageSpec, source: Path) -> ImageSpec:
    """Read image_mean, image_std, the output side and resample from a preprocessor config."""
    return ImageSpec(
        size=_output_side(fields, default.size, source),
        mean=fields.get("image_mean", default.mean),
        std=fields.get("image_std", default.std),
        resample=_RESAMPLE_BY_CODE.get(fields.get("resample"), default.resample),
    )


def _output_side(fields: dict, fallback: int, source: Path) -> int:
    """The output square's side: crop_size if the processor crops (CLIP), else size (SigLIP)."""
    if fields.get("crop_size") is not None and fields.get("do_center_crop", True):
        return _side(fields["crop_size"], "crop_size", source)
    if fields.get("size") is not None:
        return _side(fields["size"], "size", source)
    return fallback


def _side(value, key: str, source: Path) -> int:
    """An int, {"shortest_edge": n} or a square {"height": n, "width": n} -> n."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and "shortest_edge" in value:
        return int(value["shortest_edge"])
    if isinstance(value, dict) and "height" in value and value["height"] == value.get("width"):
        return int(value["height"])
    raise CheckpointError(
        f"{source}: {key} is {value!r}; mmtune needs a square side: an int, "
        f'{{"shortest_edge": n}} or {{"height": n, "width": n}}'
    )


def _triple(values, name: str) -> tuple[float, float, float]:
    """One float per RGB channel; a single number is used for all three."""
    if isinstance(values, (int, float)):
        values = (values,) * 3
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"ImageSpec.{name} needs 3 values (R, G, B), got {values}")
    return values
