"""A Check's query: what the caller's bytes become, each made at most once and only when a stage
asks for it. A JPEG is decoded at most twice (Preprocessor): for the canvas, and, when a stage needs
more pixels (verification, the regions, the geometric check), once for all of those; any other
image once."""

import functools
import hashlib

import numpy as np
from PIL import Image

from service.media import verification
from service.media.imaging import is_low_information, longest_side
from service.media.preprocess import Preprocessor, Regions


class Query:
    """Not thread-safe: a Check's stages run one after the other."""

    def __init__(self, data: bytes, preprocessor: Preprocessor):
        self.data = data
        self._preprocessor = preprocessor
        self._regions: dict[tuple[bool, bool], Regions] = {}

    @functools.cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @functools.cached_property
    def side(self) -> int:
        """The longest side of the image as sent, read from its header (no decode)."""
        return longest_side(self.data)

    @functools.cached_property
    def _decoded(self) -> tuple[np.ndarray, Image.Image | None]:
        return self._preprocessor.canvas_and_picture(self.data)

    @functools.cached_property
    def picture(self) -> Image.Image:
        """What verification compares, regions are cut from and geometry matches."""
        picture = self._decoded[1]
        return picture if picture is not None else self._preprocessor.decode(self.data)

    @functools.cached_property
    def verification_picture(self) -> verification.QueryPicture:
        """The picture as verification compares it with each candidate (prepared once)."""
        return verification.QueryPicture(self.picture)

    @functools.cached_property
    def canvas(self) -> np.ndarray:
        return self._decoded[0]

    @functools.cached_property
    def low_information(self) -> bool:
        return is_low_information(self.canvas)

    def regions(self, with_grid: bool, with_windows: bool) -> Regions:
        """Made once per Query (kept on it, not in a cache beside it: that would keep every Query,
        its decoded picture included, for as long as the process lives)."""
        asked = (with_grid, with_windows)
        if asked not in self._regions:
            self._regions[asked] = self._preprocessor.regions(self.picture, with_grid, with_windows)
        return self._regions[asked]
