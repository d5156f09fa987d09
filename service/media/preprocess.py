"""What the front service makes of a caller's image bytes: the canvas for Triton, the canvases of
its regions (for copies shown inside a larger picture: the boxes pasted on it, and a grid when
asked), and the ORB keypoints or the full-size picture for the geometric check."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.media import geometry, insets, verification
from service.media.imaging import DecodeBudget, Limits, decode, decode_canvas, to_canvas
from service.media.insets import Box


def grid(side: float, steps: int) -> list[Box]:
    """steps x steps boxes of `side`, evenly spread from edge to edge."""
    offsets = [i * (1 - side) / (steps - 1) for i in range(steps)] if steps > 1 else [(1 - side) / 2]
    return [(left, top, side, side) for top in offsets for left in offsets]


# The grid of regions a Check also searches with --region-grid when the whole image matched
# nothing: half the side on a 3 x 3 grid and 70 % of it at the corners (docs/quality.md).
REGIONS: list[Box] = grid(0.5, 3) + grid(0.7, 2)
# Regions are cut from the picture decoded at this multiple of the canvas, so that a region
# keeps its own pixels instead of an upscaled part of the canvas.
REGION_DECODE_SCALE = 2
MIN_SMALL_SIDE = 8  # a small view's shortest side: the smallest image a Check accepts (--min-image-side)


def shrunk(picture: Image.Image, side: int) -> Image.Image:
    """The picture shrunk to `side` px on its longest side (each side at least MIN_SMALL_SIDE): how
    a thumbnail of it looks (storage/small_views.py)."""
    scale = side / max(picture.size)
    size = (max(MIN_SMALL_SIDE, round(picture.width * scale)), max(MIN_SMALL_SIDE, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Described:
    canvas: np.ndarray
    keypoints: bytes  # packed ORB keypoints, or b""
    reference: bytes  # the verification reference (media/verification.py), or b""
    small_canvas: np.ndarray | None = None  # the canvas of its small view, when small views are on


@dataclass(frozen=True)
class Preprocessor:
    canvas_size: int  # the square canvas Triton embeds
    limits: Limits
    budget: DecodeBudget | None
    keypoints: bool  # enrolment stores ORB keypoints (the geometric check is on)
    references: bool = False  # enrolment stores a verification reference (verification is on)
    small_view_side: int = 0  # enrolment also embeds the picture shrunk to this side (0: not)

    def canvas(self, data: bytes) -> np.ndarray:
        """The image as a canvas_size x canvas_size RGB uint8 array."""
        return decode_canvas(data, self.canvas_size, self.limits, self.budget)

    def describe(self, data: bytes) -> "Described":
        """The canvas, and what enrolment stores beside the feature when it is on."""
        picture = decode(data, self.canvas_size, self.limits, self.budget)
        keypoints = geometry.keypoints(self.picture(data)) if self.keypoints else b""
        reference = verification.reference(self.verification_picture(data)) if self.references else b""
        small = to_canvas(shrunk(picture, self.small_view_side), self.canvas_size) if self.small_view_side else None
        return Described(to_canvas(picture, self.canvas_size), keypoints, reference, small)

    def verification_picture(self, data: bytes) -> Image.Image:
        """The image at the side verification compares queries at."""
        return decode(data, verification.QUERY_SIDE, self.limits, self.budget)

    def regions(self, data: bytes, with_grid: bool) -> tuple[list[Box], np.ndarray, list[Image.Image]]:
        """The boxes pasted on the picture (media/insets.py), then REGIONS if `with_grid`, their
        canvases stacked [boxes, canvas, canvas, 3], and the crops they were made from."""
        picture = decode(data, self.canvas_size * REGION_DECODE_SCALE, self.limits, self.budget)
        boxes = insets.boxes(picture) + (REGIONS if with_grid else [])
        width, height = picture.size
        crops = [
            picture.crop(
                (round(left * width), round(top * height), round((left + w) * width), round((top + h) * height))
            )
            for left, top, w, h in boxes
        ]
        canvases = [to_canvas(crop, self.canvas_size) for crop in crops]
        stacked = np.stack(canvases) if canvases else np.zeros((0, self.canvas_size, self.canvas_size, 3), np.uint8)
        return boxes, stacked, crops

    def picture(self, data: bytes) -> Image.Image:
        """The image at the side the geometric check works at."""
        return decode(data, geometry.MAX_SIDE, self.limits, self.budget)
