"""Decoding and preprocessing: encoded bytes to the square RGB canvas that Triton embeds."""

import contextlib
import io
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from service import memory
from service.overload import Overloaded

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# A canvas whose grey levels vary less than this (standard deviation, 0-255) shows nothing to
# compare: every blank is like every other. On the dev and clipart sets 69 of 3,370 pictures are
# exactly uniform (0.0) and the next lowest is a faint moon at 1.6.
LOW_INFORMATION_STD = 1.0
BACKGROUND = (255, 255, 255)  # transparent pixels are flattened onto white
# Bytes per pixel a decode holds at its peak, by the mode Pillow decodes to: the decoded bands (RGB
# held as 4 bytes a pixel), the RGB copy (for transparency, RGBA and the flattened RGB), and for
# high bit depths the float32 scaling in to_rgb; measured with the canvas and the reduced picture
# made in `then`, rounded up (tests/test_imaging.py measures them again).
PEAK_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 10, "LA": 14, "PA": 14, "RGB": 5, "RGBA": 14, "CMYK": 9, "YCbCr": 9}
HIGH_DEPTH_PEAK_BYTES_PER_PIXEL = 16  # I;16, I, F: the bands, float32 values, the scaled copy, RGB


class ImageError(ValueError):
    """The bytes are not an image the service can use; the message says why."""


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 64_000_000  # as the header claims
    min_side: int = 8
    max_decoded_bytes: int = 400_000_000  # the memory one decode may hold at its peak


class DecodeBudget:
    """The memory all decodes in progress may hold together (thread-safe).

    A decode that would pass it waits up to `wait_s` for others to finish, then gives up with
    Overloaded: the caller is told to retry instead of the process running out of memory."""

    def __init__(self, total_bytes: int, wait_s: float):
        self.total_bytes = total_bytes
        self.wait_s = wait_s
        self.in_use = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int):
        with self._condition:
            if not self._condition.wait_for(lambda: self.in_use + amount <= self.total_bytes, self.wait_s):
                raise Overloaded(
                    f"images being decoded hold {self.in_use / 1e6:.0f} MB of the {self.total_bytes / 1e6:.0f} MB "
                    f"budget and this one needs {amount / 1e6:.0f} MB; retry shortly"
                )
            self.in_use += amount
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= amount
                self._condition.notify_all()


def decode_canvas(
    data: bytes, canvas_size: int, limits: Limits = Limits(), budget: DecodeBudget | None = None
) -> np.ndarray:
    """The image as a canvas_size x canvas_size RGB uint8 array (what Triton embeds)."""
    return decode(data, canvas_size, limits, budget, then=lambda picture: to_canvas(picture, canvas_size))


def is_low_information(canvas: np.ndarray) -> bool:
    """Near-blank: too little variation for a descriptor to tell one such picture from another."""
    return float(canvas.mean(axis=2).std()) < LOW_INFORMATION_STD


def is_jpeg(data: bytes) -> bool:
    """JPEG bytes (its start-of-image marker): the one format whose decode depends on the side asked for."""
    return data[:3] == b"\xff\xd8\xff"


def longest_side(data: bytes) -> int:
    """The longest side of an image that decoded, read from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return max(image.size)


def to_canvas(rgb: Image.Image, size: int) -> np.ndarray:
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))


def decode[Made](
    data: bytes,
    needed_side: int,
    limits: Limits,
    budget: DecodeBudget | None = None,
    then: Callable[[Image.Image], Made] | None = None,
) -> Made | Image.Image:
    """Decodes an image: EXIF orientation applied, any mode to RGB, the first frame of several;
    `then(picture)` when given, made while the decode is still counted in the budget (what a caller
    keeps of a large picture, so that its full size is not held outside the budget).

    The size is checked from the header before any pixel is decoded, so a small file that
    claims a huge size (a decompression bomb) costs nothing; the memory the decode will hold
    (bit depth and bands counted) is checked against the per-image limit and reserved in the
    budget of all decodes in progress. JPEGs are decoded at the smallest of 1/1, 1/2, 1/4, 1/8
    scale that still covers needed_side (Pillow's draft mode). Whatever Pillow raises on the
    bytes becomes ImageError: a damaged file is the caller's mistake, not ours.
    """
    if not data:
        raise ImageError("image is empty: send the encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about damaged metadata; the decode decides
        try:
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        except UnidentifiedImageError:
            raise ImageError(
                f"image is not in a supported format ({', '.join(SUPPORTED_FORMATS)}); "
                f"{len(data)} bytes starting {data[:8].hex()}"
            ) from None
        except Image.DecompressionBombError as error:
            raise ImageError(f"image is too large to decode safely: {error}") from None
        except Exception as error:  # noqa: BLE001 - Pillow's plugins raise many kinds on damaged headers
            raise ImageError(f"image header could not be read ({type(error).__name__}: {error})") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the "
                f"{limits.max_pixels / 1e6:.0f} Mpx limit; downscale it before sending"
            )
        if min(width, height) < limits.min_side:
            raise ImageError(f"image is {width}x{height} px; both sides must be at least {limits.min_side} px")
        try:
            if image.format == "JPEG":
                image.draft("RGB", (needed_side, needed_side))
            peak = peak_bytes(image)
        except Exception as error:  # noqa: BLE001 - as above
            raise ImageError(f"image {image.format} {width}x{height} could not be decoded: {error}") from None
        if peak > limits.max_decoded_bytes:
            raise ImageError(
                f"image is {width}x{height} {image.mode}: decoding it needs {peak / 1e6:.0f} MB, over the "
                f"{limits.max_decoded_bytes / 1e6:.0f} MB limit per image; send it smaller or in 8-bit colour"
            )
        with budget.hold(peak) if budget else contextlib.nullcontext():
            try:
                image.load()
                picture = to_rgb(upright(image))
            except Exception as error:  # noqa: BLE001 - as above: truncated data, bad tables, broken EXIF
                raise ImageError(f"image {image.format} {width}x{height} could not be decoded: {error}") from None
            made = then(picture) if then else picture
    if peak >= memory.LARGE_DECODE_BYTES:
        memory.large_decode_done()
    return made


def peak_bytes(image: Image.Image) -> int:
    """The memory decoding `image` holds at its peak (after any draft scaling)."""
    width, height = image.size
    per_pixel = PEAK_BYTES_PER_PIXEL.get(image.mode, HIGH_DEPTH_PEAK_BYTES_PER_PIXEL)
    return width * height * per_pixel


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (itself when it says nothing: exif_transpose
    would copy it, twice the memory for a moment)."""
    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)
    return ImageOps.exif_transpose(image) if turned else image


def reduced(picture: Image.Image, side: int) -> Image.Image:
    """The picture reduced by the largest whole factor that keeps both sides at least `side`, as a
    JPEG's draft scale is (a box filter: fast, and a picture kept for a Check stays small)."""
    factor = min(picture.size) // side
    return picture.reduce(factor) if factor > 1 else picture


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode in ("I", "I;16", "F"):  # high bit depth: scale to 8 bits rather than clip
        values = np.asarray(image, dtype=np.float32)
        low, span = values.min(), max(float(values.max() - values.min()), 1e-9)
        values -= low
        values *= 255 / span
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
