"""Image I/O: read one file into an upright 8-bit RGB Pillow image, or say why it cannot be used.

Every failure is a `MediaError` whose message names the file and what to do about it.
"""

import io
import os
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from mmtune.errors import MediaError, unreadable

MAX_PIXELS = 64_000_000  # pixels; larger images are refused (decompression bombs)
EXIF_ORIENTATION = 0x0112  # EXIF tag: 1 upright; 5 .. 8 a quarter turn (width and height swap)

# Grayscale modes wider than 8 bits, and the value in each that becomes white (255).
# "I" (32-bit int) is read on the 16-bit scale: 16-bit PNG/TIFF grayscale is what produces it.
# "F" (32-bit float) is read on the [0, 1] scale; NaN becomes black.
WHITE_LEVEL = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what Pillow raises on bad bytes


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Read an image file (or `data`, its bytes; `path` then only names it) as RGB: EXIF orientation
    applied, transparency over white, pixels loaded.

    Returns an `Image.Image` of mode "RGB", size (W, H) as displayed (after EXIF rotation).
    Raises `MediaError` for a missing, corrupt or truncated file, one of more than `max_pixels`
    pixels, or a mode with no sensible RGB conversion.
    """
    check_readable(path, data)
    return _to_rgb(_decode(path, max_pixels, data), path)


def image_size(path: str | os.PathLike, data: bytes | None = None, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(W, H) as displayed, from the file's header and EXIF orientation alone (no pixel decoded);
    raises MediaError as `load_image` does for a missing or unreadable file or too many pixels."""
    check_readable(path, data)
    with _opened(path, data, max_pixels) as img:
        width, height = img.size
        turned = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn swaps the sides
    return (height, width) if turned else (width, height)


def check_readable(path, data: bytes | None = None) -> None:
    """Open the file once (no pixel read), so a bad path is told its real reason rather than "not found"."""
    if data is not None:
        return
    try:
        with open(path, "rb"):
            return
    except FileNotFoundError:
        link = f" (a symlink to {os.readlink(path)}, which does not exist)" if os.path.islink(path) else ""
        raise MediaError(f"image file not found: {path}{link}") from None
    except OSError as e:
        raise MediaError(f"image file {path} {unreadable(path, e, 'an image file')}") from None


@contextmanager
def _opened(path, data: bytes | None, max_pixels: int):
    """The image, open with only its header read, refused when over `max_pixels`; Pillow's errors
    inside the block (header or pixel decoding) become MediaErrors naming the file."""
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            _check_pixels(img.size, path, max_pixels)
            yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fires inside Image.open, before the size can be read; the warning
        # only arrives as an exception when the caller's warning filters make it one.
        raise MediaError(f"image {path} is over Pillow's decompression-bomb limit ({e}); "
                         f"{_resize(max_pixels)}") from e
    except _DECODE_ERRORS as e:
        raise MediaError(f"cannot decode image {path}: {e} (is the file truncated?)") from e


def _decode(path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """Open, check the header's size, decode every pixel and apply the EXIF orientation."""
    with _opened(path, data, max_pixels) as img:
        img.load()  # decode now, so a truncated file fails here and not in a data worker later
        return ImageOps.exif_transpose(img)  # a new image, independent of the closed file


def _check_pixels(size: tuple[int, int], path, max_pixels: int) -> None:
    """Refuse an image whose header claims more than `max_pixels` pixels, before decoding it."""
    width, height = size
    if width * height > max_pixels:
        raise MediaError(
            f"image {path} has {width} x {height} = {width * height} pixels, over the limit of "
            f"{max_pixels}; {_resize(max_pixels)}"
        )


def _resize(max_pixels: int) -> str:
    """The fix for an image over the limit. The limit is load_image's max_pixels (MAX_PIXELS), no config key."""
    return f"resize it to at most {max_pixels} pixels (width x height) or drop the row"


def _to_rgb(img: Image.Image, path) -> Image.Image:
    """Any mode to 8-bit RGB: wide grayscale rescaled, transparency composited over white."""
    if img.mode in WHITE_LEVEL:
        return _wide_gray_to_rgb(img, WHITE_LEVEL[img.mode])
    try:
        if img.has_transparency_data:  # RGBA, LA, PA, RGBa, or a tRNS / GIF transparent colour
            return _over_white(img)
        return img if img.mode == "RGB" else img.convert("RGB")
    except ValueError as e:  # Pillow has no conversion for this mode (e.g. "La")
        raise MediaError(
            f"image {path} has mode {img.mode}, which mmtune cannot convert to RGB"
        ) from e


def _wide_gray_to_rgb(img: Image.Image, white: float) -> Image.Image:
    """Scale a 16-bit / 32-bit / float grayscale image so `white` maps to 255 (not clipped)."""
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))  # (H, W)
    gray = np.clip(np.rint(values * (255.0 / white)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")  # (H, W) uint8 -> mode "L"


def _over_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency over a white background (alpha 0 -> (255, 255, 255))."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
