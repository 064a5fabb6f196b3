"""High-resolution images as tiles + an overview: the grid, the views, their token counts, packing."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmtune.collators import collate_packed, collate_padded
from mmtune.config import DataConfig
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.formats import Sample
from mmtune.model.build import build_model
from mmtune.model.placeholders import num_image_tokens
from mmtune.vision.io import image_size
from mmtune.vision.preprocess import ImageSpec, preprocess_image
from mmtune.vision.tiles import best_grid, image_views, num_views
from tests.tiny import tiny_model_config


@pytest.mark.parametrize("size,max_tiles,grid", [
    ((672, 336), 4, (1, 2)),  # wide: two tiles side by side
    ((336, 1008), 4, (3, 1)),  # tall
    ((1000, 1000), 4, (2, 2)),
    ((1000, 1000), 9, (3, 3)),
    ((100, 50), 4, (1, 1)),  # small: one tile is enough, nothing is upscaled
    ((4000, 300), 6, (1, 6)),
])
def test_best_grid_keeps_resolution_then_wastes_least(size, max_tiles, grid):
    assert best_grid(*size, max_tiles, 336) == grid
    rows, cols = grid
    assert num_views(*size, max_tiles, 336) == (1 if rows * cols == 1 else 1 + rows * cols)


def test_one_tile_is_todays_square_exactly():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    spec = ImageSpec.clip(32)
    for resize in ("crop", "pad"):
        want = preprocess_image(img, spec, resize)
        assert torch.equal(image_views(img, spec, resize, max_tiles=1), want[None])
        assert torch.equal(image_views(img.resize((20, 12)), spec, resize, max_tiles=4),
                           preprocess_image(img.resize((20, 12)), spec, resize)[None])  # small: 1 view


def test_tiles_follow_the_overview_row_by_row():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # quadrants: top-left, top-right, ...
    img = Image.new("RGB", (64, 64))
    for k, c in enumerate(colours):
        img.paste(c, (32 * (k % 2), 32 * (k // 2), 32 * (k % 2) + 32, 32 * (k // 2) + 32))
    spec = ImageSpec.clip(32)
    views = image_views(img, spec, "crop", max_tiles=4)
    assert views.shape == (5, 3, 32, 32)
    assert torch.equal(views[0], preprocess_image(img, spec, "crop"))
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    for k, c in enumerate(colours):
        want = ((torch.tensor(c, dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std).expand(3, 32, 32)
        torch.testing.assert_close(views[1 + k], want)


def test_size_from_the_header_turns_with_exif_orientation(tmp_path):
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    img.save(tmp_path / "turned.jpg", exif=exif)
    img.save(tmp_path / "plain.png")
    assert image_size(tmp_path / "turned.jpg") == (20, 60)
    assert image_size(tmp_path / "plain.png") == (60, 20)


def _row(path, answer):
    return Sample([{"role": "user", "content": [{"type": "image", "path": str(path)},
                                                {"type": "text", "text": "What is in the image?"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": answer}]}], f"{path}:1")


@pytest.mark.parametrize("attn", ["sdpa", "varlen"])
def test_tiles_of_many_images_count_from_headers_and_pack_with_the_padded_loss(tmp_path, tokenizer_dir, attn):
    cfg = tiny_model_config(tokenizer_dir, audio=False)
    cfg.vision.max_tiles = 4
    cfg.attn_implementation = attn
    model, tokenizer = build_model(cfg)
    data = DataConfig()
    encoder = SampleEncoder(tokenizer, MediaSpec.from_config(cfg, data), data)
    rng = np.random.default_rng(1)
    sizes = {"wide.png": (64, 32), "big.png": (70, 64), "small.png": (20, 20)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    samples = [_row(tmp_path / name, answer) for name, answer in zip(sizes, ("A red circle.", "odd", "even"))]
    examples = [encoder(s) for s in samples]
    per_view = num_image_tokens(32, 8)
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    assert [e.images[0].shape[0] for e in examples] == [3, 5, 1]  # 1 + (1 x 2), 1 + (2 x 2), one square
    assert [int((e.input_ids == image_id).sum()) for e in examples] == [3 * per_view, 5 * per_view, per_view]
    assert [encoder.measure(s).tokens for s in samples] == [len(e) for e in examples]  # headers only
    with torch.no_grad():
        padded = model.eval()(**collate_padded(examples, tokenizer.pad_token_id))
        packed = model(**collate_packed(examples))
    assert collate_packed(examples)["image_owner"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]
    torch.testing.assert_close(packed.loss_sum, padded.loss_sum, atol=1e-5, rtol=1e-6)


def test_max_tiles_must_be_a_whole_number_at_least_one():
    from mmtune.config import ConfigError, TowerConfig

    with pytest.raises(ConfigError, match="max_tiles: 0"):
        TowerConfig(config={"model_type": "clip_vision_model"}, max_tiles=0)
