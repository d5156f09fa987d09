"""A Check's query: what the caller's bytes become, each made at most once and only when a stage
asks for it. A JPEG is decoded at most twice (Preprocessor): for the canvas, and, when a stage needs
more pixels (verification, the regions, the geometric check), once for all of those; any other
image once."""

import functools
import hashlib

import numpy as np
from PIL import Image

from service.media import verification
from service.media.imaging import is_jpeg, is_low_information, longest_side
from service.media.preprocess import Preprocessor, Regions


class Query:
    """Not thread-safe: a Check's stages run one after the other."""

    def __init__(self, data: bytes, preprocessor: Preprocessor):
        self.data = data
        self._preprocessor = preprocessor

    @functools.cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @functools.cached_property
    def side(self) -> int:
        """The longest side of the image as sent, read from its header (no decode)."""
        return longest_side(self.data)

    @functools.cached_property
    def _for_canvas(self) -> Image.Image:
        return self._preprocessor.decode(self.data, side=self._preprocessor.canvas_size)

    @functools.cached_property
    def picture(self) -> Image.Image:
        """What verification compares, regions are cut from and geometry matches."""
        return self._preprocessor.decode(self.data) if is_jpeg(self.data) else self._for_canvas

    @functools.cached_property
    def verification_picture(self) -> verification.QueryPicture:
        """The picture as verification compares it with each candidate (prepared once)."""
        return verification.QueryPicture(self.picture)

    @functools.cached_property
    def canvas(self) -> np.ndarray:
        return self._preprocessor.canvas_of(self._for_canvas)

    @functools.cached_property
    def low_information(self) -> bool:
        return is_low_information(self.canvas)

    @functools.cache  # noqa: B019 - a Query lives for one Check
    def regions(self, with_grid: bool, with_windows: bool) -> Regions:
        return self._preprocessor.regions(self.picture, with_grid, with_windows)
