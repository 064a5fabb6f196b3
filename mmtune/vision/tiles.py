"""High-resolution images as a grid of tower-sized tiles plus a downscaled overview (LLaVA-NeXT "anyres").

A tower sees `size` x `size` pixels (336 for CLIP ViT-L/14-336), so a 1344 x 896 document is shrunk
to a ninth of its pixels. With `max_tiles` > 1 the image is fitted into the grid of tiles
(rows x cols <= max_tiles) that keeps the most of its resolution and wastes the least padding,
then cut into those tiles; the tower encodes the overview (today's single square) and every tile:

    views = 1 + rows * cols (or 1 when the best grid is one tile: then it is today's path exactly)
    image tokens = views * tokens per view

The grid, and so the token count, is a function of the image's size alone (read from its header
by the length index, no decode). Views go in the order overview, then tiles row by row.
"""

import torch
from PIL import Image

from mmtune.vision.preprocess import RESAMPLE, ImageSpec, normalize, preprocess_image


def best_grid(width: int, height: int, max_tiles: int, size: int) -> tuple[int, int]:
    """(rows, cols) of the grid of size x size tiles that best holds a width x height image: the most
    of its pixels kept (not upscaled past them), then the least padding (LLaVA-NeXT's rule)."""
    best, best_key = (1, 1), None
    for rows in range(1, max_tiles + 1):
        for cols in range(1, max_tiles // rows + 1):
            scale = min(cols * size / width, rows * size / height)
            kept = min(int(width * scale) * int(height * scale), width * height)  # pixels of the image kept
            key = (kept, -(rows * cols * size * size - kept))  # more kept, then less waste
            if best_key is None or key > best_key:
                best, best_key = (rows, cols), key
    return best


def num_views(width: int, height: int, max_tiles: int, size: int) -> int:
    """Tower inputs one image becomes: 1, or the overview plus rows x cols tiles."""
    if max_tiles <= 1:
        return 1
    rows, cols = best_grid(width, height, max_tiles, size)
    return 1 if rows * cols == 1 else 1 + rows * cols


def image_views(img: Image.Image, spec: ImageSpec, resize: str = "crop", max_tiles: int = 1) -> torch.Tensor:
    """An RGB image -> (V, 3, S, S): the overview (`preprocess_image`), then the tiles row by row."""
    overview = preprocess_image(img, spec, resize)[None]  # (1, 3, S, S)
    if num_views(*img.size, max_tiles, spec.size) == 1:
        return overview
    rows, cols = best_grid(*img.size, max_tiles, spec.size)
    canvas = _fit_and_pad(img, cols * spec.size, rows * spec.size, spec)
    tiles = [canvas.crop((c * spec.size, r * spec.size, (c + 1) * spec.size, (r + 1) * spec.size))
             for r in range(rows) for c in range(cols)]
    return torch.cat([overview, torch.stack([normalize(t, spec) for t in tiles])])  # (1 + rows*cols, 3, S, S)


def _fit_and_pad(img: Image.Image, width: int, height: int, spec: ImageSpec) -> Image.Image:
    """The image scaled to fit inside width x height (aspect kept), centred on the mean colour."""
    scale = min(width / img.width, height / img.height)
    new = (max(1, min(width, round(img.width * scale))), max(1, min(height, round(img.height * scale))))
    fill = tuple(int(m * 255) for m in spec.mean)
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(img.resize(new, RESAMPLE[spec.resample]), ((width - new[0]) // 2, (height - new[1]) // 2))
    return canvas
