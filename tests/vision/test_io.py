import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from mmtune.errors import MediaError
from mmtune.vision import load_image
from mmtune.vision.io import MAX_PIXELS

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _pixels(img):
    """(H, W, 3) uint8 array of an RGB image."""
    assert img.mode == "RGB"
    return np.asarray(img)


def _png_header(width, height):
    """A PNG of a few dozen bytes whose IHDR claims width x height pixels (no pixel data)."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_rgb_png_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.size == (7, 5)
    np.testing.assert_array_equal(_pixels(img), arr)


def test_rgba_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])  # clear, opaque, half
    img.save(tmp_path / "a.png")
    out = _pixels(load_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert out[0, 2].tolist() == [127, 127, 127]  # 255 * (1 - 128/255)


def test_la_is_composited_over_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (100, 255)])
    img.save(tmp_path / "a.png")
    out = _pixels(load_image(tmp_path / "a.png"))
    assert out[0].tolist() == [[255, 255, 255], [100, 100, 100]]


def _palette_image():
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * (254 * 3))
    img.putdata([0, 1])
    return img


def test_palette_becomes_its_colours(tmp_path):
    _palette_image().save(tmp_path / "a.png")
    assert _pixels(load_image(tmp_path / "a.png"))[0].tolist() == [list(RED), list(BLUE)]


def test_palette_transparent_index_becomes_white(tmp_path):
    _palette_image().save(tmp_path / "a.png", transparency=0)
    _palette_image().save(tmp_path / "a.gif", transparency=0)
    for name in ("a.png", "a.gif"):
        assert _pixels(load_image(tmp_path / name))[0].tolist() == [list(WHITE), list(BLUE)]


def test_grayscale_and_bilevel_become_gray_rgb(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    Image.new("1", (2, 1), 1).save(tmp_path / "b.png")
    assert _pixels(load_image(tmp_path / "l.png"))[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    assert _pixels(load_image(tmp_path / "b.png"))[0].tolist() == [[255] * 3, [255] * 3]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "I;16"
    out = _pixels(load_image(tmp_path / "a.png"))[0, :, 0]
    assert out.tolist() == [0, 128, 255, 4]  # 1000 / 257 = 3.9; clipping would give 255


def test_32_bit_int_uses_the_16_bit_scale_and_float_the_unit_scale(tmp_path):
    Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "i.tif") as i, Image.open(tmp_path / "f.tif") as f:
        assert (i.mode, f.mode) == ("I", "F")
    assert _pixels(load_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 255, 255, 0]
    assert _pixels(load_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "a.jpg", quality=95)
    with Image.open(tmp_path / "a.jpg") as img:
        assert img.mode == "CMYK"
    out = _pixels(load_image(tmp_path / "a.jpg")).astype(int)
    assert np.abs(out - np.array(RED)).max() <= 3  # JPEG rounding


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), BLUE)  # stored landscape, red top-left quadrant
    img.paste(RED, (0, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "a.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.size == (20, 40)  # portrait, as displayed
    corners = _pixels(out)[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)  # TL, TR, BL, BR
    expected = np.array([BLUE, RED, BLUE, BLUE])  # stored top-left moves to the top-right
    assert np.abs(corners - expected).max() <= 8


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file_fails_at_load(tmp_path, fmt):
    rng = np.random.default_rng(0)
    path = tmp_path / f"a.{fmt}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError) as err:
        load_image(path)
    message = str(err.value)
    assert message.startswith(f"cannot decode image {path}: image file is truncated")
    assert message.endswith("(is the file truncated?)")


def test_garbage_file_fails(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(MediaError, match="cannot decode image .*a.jpg: cannot identify image file"):
        load_image(path)


def test_missing_file_fails(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert str(err.value) == f"image file not found: {path}"


def test_header_over_the_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(10_000, 7_000))  # 70 M pixels claimed in 57 bytes
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert str(err.value) == (
        f"image {path} has 10000 x 7000 = 70000000 pixels, over the limit of {MAX_PIXELS}; "
        f"resize it to at most {MAX_PIXELS} pixels (width x height) or drop the row"
    )


def test_real_image_over_a_small_limit_is_refused(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    with pytest.raises(MediaError, match=r"has 20 x 10 = 200 pixels, over the limit of 199;"):
        load_image(tmp_path / "a.png", max_pixels=199)
    assert load_image(tmp_path / "a.png", max_pixels=200).size == (20, 10)


def test_pillow_bomb_error_becomes_media_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(20_000, 20_000))  # past Pillow's own hard limit
    expected = re.escape(f"image {path} is over Pillow's decompression-bomb limit")
    with pytest.raises(MediaError, match=expected):
        load_image(path, max_pixels=10**9)


def test_pillow_bomb_warning_raised_as_error_becomes_media_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(10_000, 10_000))  # past Pillow's warning limit only
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(MediaError, match="decompression-bomb limit"):
            load_image(path, max_pixels=10**9)


def test_mode_without_rgb_conversion_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (2, 2)).save(path)
    # No file format decodes to "La" (premultiplied L + alpha), and Pillow cannot convert it.
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: Image.new("La", (2, 2)))
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert str(err.value) == f"image {path} has mode La, which mmtune cannot convert to RGB"
