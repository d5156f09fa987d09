"""Decoding and preprocessing, on small synthetic images."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.media.imaging import ImageError, Limits, decode_canvas, peak_bytes

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


# Run in a fresh process: the peak resident memory of one decode, as a Check makes it (the canvas and
# the picture kept, imaging.decode's `then`), beside what the decode budget reserves for it. Large
# blocks are mmapped (each one fresh pages, counted when touched) after a small decode of the same
# kind has loaded the codec.
MEASURE_DECODE = """
import os, sys
from pathlib import Path
from service.media.imaging import Limits, decode, reduced, to_canvas
from tools.service_process import peak_resident_mb, reset_peak_resident, resident_mb
data, small = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
kept = lambda picture: (to_canvas(picture, 224), reduced(picture, 448))
decode(small, 10_000, Limits(), then=kept)
reset_peak_resident(os.getpid())
before = resident_mb(os.getpid())
decode(data, 10_000, Limits(), then=kept)
print(round((peak_resident_mb(os.getpid()) - before) * 2**20))
"""


def gradient(mode: str, width: int, height: int) -> Image.Image:
    ramp = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    rgb = Image.fromarray(np.stack([ramp, ramp[::-1], ramp[:, ::-1]], -1))
    if mode == "I;16":
        return Image.fromarray(ramp.astype(np.uint16) * 250)
    if mode == "P+transparency":
        return rgb.quantize(64)
    return rgb.convert(mode)


@pytest.mark.parametrize(
    "mode, image_format",
    [
        ("RGB", "PNG"),
        ("RGB", "JPEG"),
        ("RGBA", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("1", "PNG"),
        ("P+transparency", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("YCbCr", "TIFF"),
    ],
)
def test_a_decode_holds_no_more_than_the_budget_reserves_for_it(tmp_path, mode, image_format):
    options = {"transparency": 0} if mode == "P+transparency" else {}
    files = []
    for name, (width, height) in (("large", (2400, 1800)), ("small", (300, 200))):
        files.append(tmp_path / name)
        files[-1].write_bytes(encode(gradient(mode, width, height), image_format, **options))
    reserved = peak_bytes(Image.open(files[0]))
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_DECODE, *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=Path(__file__).parent.parent,
    )
    held = int(measured.stdout)
    assert held > 0.5 * 2400 * 1800  # the measure sees the decode at all
    assert held <= reserved + 2**20, f"{mode} {image_format}: holds {held / 1e6:.1f} MB, reserves {reserved / 1e6:.1f}"
