"""What the front service makes of a caller's image bytes: the canvas for Triton, and the ORB
keypoints or the full-size picture for the geometric check."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.media import geometry
from service.media.imaging import decode, decode_canvas, to_canvas


@dataclass(frozen=True)
class Preprocessor:
    canvas_size: int  # the square canvas Triton embeds
    max_pixels: int
    min_side: int
    keypoints: bool  # enrolment stores ORB keypoints (the geometric check is on)

    def canvas(self, data: bytes) -> np.ndarray:
        """The image as a canvas_size x canvas_size RGB uint8 array."""
        return decode_canvas(data, self.canvas_size, self.max_pixels, self.min_side)

    def describe(self, data: bytes) -> tuple[np.ndarray, bytes]:
        """The canvas, and the packed keypoints when they are stored (else b"")."""
        if not self.keypoints:
            return self.canvas(data), b""
        picture = self.picture(data)
        return to_canvas(picture, self.canvas_size), geometry.keypoints(picture)

    def picture(self, data: bytes) -> Image.Image:
        """The image at the side the geometric check works at."""
        return decode(data, geometry.MAX_SIDE, self.max_pixels, self.min_side)
