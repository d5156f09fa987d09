"""Decoding and preprocessing, on small synthetic images."""

import io

import numpy as np
import pytest
from PIL import Image

from service.media.imaging import ImageError, Limits, decode_canvas

CANVAS = 246


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    return decode_canvas(data, CANVAS, Limits(min_side=32))


def left_red_right_blue(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_canvas_is_square_rgb_uint8():
    canvas = decode(encode(left_red_right_blue(400, 300), "PNG"))
    assert canvas.shape == (CANVAS, CANVAS, 3) and canvas.dtype == np.uint8
    assert canvas[:, :100, 0].mean() > 250 and canvas[:, -100:, 2].mean() > 250


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: what is stored on the left shows on the right
    canvas = decode(encode(left_red_right_blue(400, 300), "JPEG", exif=exif, quality=95))
    assert canvas[:, :100, 2].mean() > 200 and canvas[:, -100:, 0].mean() > 200


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 50, 100))
    canvas = decode(encode(image, "PNG"))
    assert canvas[:, -100:].min() > 250 and canvas[:, :100].max() < 5


def test_sixteen_bit_grey_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 200, dtype=np.uint16), (100, 1))
    canvas = decode(encode(Image.fromarray(ramp), "PNG"))
    assert canvas[:, 0].mean() < 10 and canvas[:, -1].mean() > 245


def test_large_jpeg_is_decoded_at_reduced_size_with_the_same_result():
    big = left_red_right_blue(4000, 3000)
    canvas = decode(encode(big, "JPEG", quality=90))
    reference = np.asarray(big.resize((CANVAS, CANVAS), Image.Resampling.BILINEAR))
    assert np.abs(canvas.astype(int) - reference.astype(int)).mean() < 3


@pytest.mark.parametrize("size", [(31, 400), (400, 20)])
def test_a_side_under_the_minimum_is_refused(size):
    with pytest.raises(ImageError, match="at least 32 px"):
        decode(encode(Image.new("RGB", size), "PNG"))
