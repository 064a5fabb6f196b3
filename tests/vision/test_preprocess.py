import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmtune.errors import CheckpointError
from mmtune.vision import ImageSpec, preprocess_image
from mmtune.vision.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

RED, BLUE, BLACK = (255, 0, 0), (0, 0, 255), (0, 0, 0)


def _expected(color, spec):
    """(3,) float32: what a pixel of 8-bit `color` normalizes to under `spec`."""
    c = torch.tensor(color, dtype=torch.float64) / 255
    return ((c - torch.tensor(spec.mean, dtype=torch.float64)) / torch.tensor(spec.std)).float()


def _bands(width, height, colors):
    """A (W, H) RGB image of equal-width vertical bands, one per colour, left to right."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    for i, color in enumerate(colors):
        arr[:, i * width // len(colors) : (i + 1) * width // len(colors)] = color
    return Image.fromarray(arr)


def _smooth_random(width, height, seed=0):
    """A random but smooth (photo-like) image: 8 x 6 random colours upsampled to (W, H)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def test_spec_presets():
    clip, siglip = ImageSpec.clip(336), ImageSpec.siglip()
    assert (clip.size, clip.mean, clip.std, clip.resample) == (
        336, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic")
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073)
    assert clip.std == (0.26862954, 0.26130258, 0.27577711)
    assert (siglip.size, siglip.mean, siglip.std) == (224, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("bad", [dict(size=0), dict(std=(0.5, 0.0, 0.5)), dict(mean=(0.5, 0.5)),
                                 dict(resample="cubic")])
def test_spec_rejects_bad_values(bad):
    fields = dict(size=224, mean=(0.5,) * 3, std=(0.5,) * 3) | bad
    with pytest.raises(ValueError, match=f"ImageSpec.{next(iter(bad))} "):
        ImageSpec(**fields)


@pytest.mark.parametrize("spec", [ImageSpec.clip(32), ImageSpec.siglip(48)])
@pytest.mark.parametrize("resize, size", [("crop", (90, 40)), ("crop", (20, 70)),
                                          ("pad", (50, 50))])
def test_solid_colour_normalizes_exactly(spec, resize, size):
    color = (200, 100, 31)
    out = preprocess_image(Image.new("RGB", size, color), spec, resize)
    assert out.shape == (3, spec.size, spec.size) and out.dtype == torch.float32
    expected = _expected(color, spec).view(3, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tall", [False, True])
def test_crop_keeps_the_center(tall):
    # 2:1 image: black | red | blue | black. The center square holds exactly red | blue.
    img = _bands(400, 200, [BLACK, RED, BLUE, BLACK])
    img = img.transpose(Image.Transpose.TRANSPOSE) if tall else img  # bands as stripes, top down
    spec = ImageSpec.clip(64)
    out = preprocess_image(img, spec, "crop")
    out = out.transpose(1, 2) if tall else out  # (3, H, W) with the bands along W
    red, blue = _expected(RED, spec).view(3, 1, 1), _expected(BLUE, spec).view(3, 1, 1)
    # 400 -> 128 columns, crop 32..96; bicubic blends 2 output columns at each colour edge.
    torch.testing.assert_close(out[:, :, 3:29], red.expand(3, 64, 26), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 35:61], blue.expand(3, 64, 26), atol=1e-6, rtol=0)
    black = _expected(BLACK, spec).view(3, 1, 1)
    assert ((out - black).abs().amax(dim=0) > 1).all()  # no black column survived the crop


@pytest.mark.parametrize("tall", [False, True])
def test_pad_keeps_the_whole_image_with_mean_coloured_bars(tall):
    img = _bands(128, 64, [RED, BLUE])  # 2:1; pads to 128 x 128, resized to 64 x 64
    img = img.transpose(Image.Transpose.TRANSPOSE) if tall else img
    spec = ImageSpec.clip(64)
    out = preprocess_image(img, spec, "pad")
    out = out.transpose(1, 2) if tall else out  # (3, H, W) with the bars above and below
    fill = tuple(int(m * 255) for m in spec.mean)  # LLaVA's expand2square background
    bar = _expected(fill, spec).view(3, 1, 1)
    assert bar.abs().max() < 1 / 255 / min(spec.std)  # int() truncation is all that is left
    torch.testing.assert_close(out[:, :14], bar.expand(3, 14, 64), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 50:], bar.expand(3, 14, 64), atol=1e-6, rtol=0)
    red, blue = _expected(RED, spec).view(3, 1, 1), _expected(BLUE, spec).view(3, 1, 1)
    # The image fills rows 16..47 over the full width: both outer columns are kept.
    torch.testing.assert_close(out[:, 18:46, :30], red.expand(3, 28, 30), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 18:46, 34:], blue.expand(3, 28, 30), atol=1e-6, rtol=0)


def test_rejects_non_rgb_and_unknown_resize():
    with pytest.raises(ValueError, match="got mode RGBA"):
        preprocess_image(Image.new("RGBA", (8, 8)), ImageSpec.clip(8))
    with pytest.raises(ValueError, match="resize must be one of"):
        preprocess_image(Image.new("RGB", (8, 8)), ImageSpec.clip(8), "stretch")


@pytest.mark.parametrize("width, height, size", [(300, 200, 224), (97, 640, 64), (50, 30, 64)])
def test_crop_matches_clip_image_processor_pil_exactly(width, height, size):
    # Same Pillow resize of the same uint8 pixels, same crop offsets: only float rounding differs
    # (measured 0.0 on noise, the hardest input for a resampler).
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                      crop_size={"height": size, "width": size})
    expected = torch.as_tensor(processor(img, return_tensors="np")["pixel_values"][0])
    torch.testing.assert_close(preprocess_image(img, ImageSpec.clip(size)), expected,
                               atol=1e-5, rtol=0)


def test_crop_matches_clip_image_processor_on_any_backend():
    # CLIPImageProcessor is the Pillow backend without torchvision (exact, as above) and the
    # torchvision one with it: tensor bicubic (a = -0.75, Pillow uses -0.5) + antialias, rounded
    # to uint8. Emulated on smooth images that differs by at most 1 level of 255 per pixel (mean
    # 0.2); on pure noise by up to ~23 levels. Hence a smooth image and a 2-level tolerance.
    from transformers import CLIPImageProcessor

    img = _smooth_random(300, 200)
    processor = CLIPImageProcessor(size={"shortest_edge": 64},
                                   crop_size={"height": 64, "width": 64})
    expected = torch.as_tensor(processor(img, return_tensors="pt")["pixel_values"][0])
    levels = (preprocess_image(img, ImageSpec.clip(64)) - expected) * torch.tensor(
        OPENAI_CLIP_STD).view(3, 1, 1) * 255
    assert levels.abs().max() <= 2.0


def test_square_crop_matches_siglip_image_processor_pil():
    from transformers import SiglipImageProcessorPil

    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    expected = SiglipImageProcessorPil(size={"height": 96, "width": 96})(img, return_tensors="np")
    out = preprocess_image(img, ImageSpec.siglip(96))
    torch.testing.assert_close(out, torch.as_tensor(expected["pixel_values"][0]), atol=1e-5, rtol=0)


def test_from_pretrained_reads_a_saved_clip_processor(tmp_path):
    from transformers import CLIPImageProcessorPil

    CLIPImageProcessorPil(size={"shortest_edge": 336},
                          crop_size={"height": 336, "width": 336}).save_pretrained(tmp_path)
    assert ImageSpec.from_pretrained(tmp_path, ImageSpec.siglip()) == ImageSpec.clip(336)


def _write_config(folder, fields):
    (folder / "preprocessor_config.json").write_text(json.dumps(fields))
    return folder


@pytest.mark.parametrize("fields, size", [
    ({"size": {"shortest_edge": 336}, "crop_size": {"height": 224, "width": 224}}, 224),
    ({"size": {"shortest_edge": 336}, "crop_size": 224, "do_center_crop": False}, 336),
    ({"size": {"height": 384, "width": 384}}, 384),
    ({"size": 256, "crop_size": 240}, 240),
    ({"size": 256}, 256),
    ({}, 100),
])
def test_from_pretrained_reads_each_size_form(tmp_path, fields, size):
    spec = ImageSpec.from_pretrained(_write_config(tmp_path, fields), ImageSpec.clip(100))
    assert spec.size == size


def test_from_pretrained_reads_stats_and_resample_and_defaults_the_rest(tmp_path):
    folder = _write_config(tmp_path, {"image_mean": [0.1, 0.2, 0.3], "image_std": 0.25,
                                      "resample": 2, "size": {"height": 384, "width": 384}})
    spec = ImageSpec.from_pretrained(folder, ImageSpec.clip())
    assert spec == ImageSpec(384, (0.1, 0.2, 0.3), (0.25, 0.25, 0.25), "bilinear")
    assert ImageSpec.from_pretrained(folder / "preprocessor_config.json", ImageSpec.clip()) == spec
    only_crop = _write_config(tmp_path, {"crop_size": 64})
    assert ImageSpec.from_pretrained(only_crop, ImageSpec.siglip()) == ImageSpec.siglip(64)


def test_from_pretrained_without_a_config_returns_the_default(tmp_path):
    default = ImageSpec.siglip(384)
    assert ImageSpec.from_pretrained(tmp_path, default) is default
    assert ImageSpec.from_pretrained("google/siglip-base-patch16-224", default) is default


def test_from_pretrained_names_the_file_and_key_of_a_non_square_size(tmp_path):
    _write_config(tmp_path, {"size": {"height": 224, "width": 336}})
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: size is .*336"):
        ImageSpec.from_pretrained(tmp_path, ImageSpec.clip())
