"""What the front service makes of a caller's image bytes: the canvas for Triton, the canvases of
its regions (for copies shown inside a larger picture: the boxes pasted on it, and a grid and the
windows' larger canvas when asked), and the ORB keypoints or the full-size picture for the geometric check."""

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import metrics
from service.media import geometry, insets, verification
from service.media.imaging import DecodeBudget, Limits, decode, is_jpeg, reduced, to_canvas
from service.media.insets import Box
from service.triton import contract


def grid(side: float, steps: int) -> list[Box]:
    """steps x steps boxes of `side`, evenly spread from edge to edge."""
    offsets = [i * (1 - side) / (steps - 1) for i in range(steps)] if steps > 1 else [(1 - side) / 2]
    return [(left, top, side, side) for top in offsets for left in offsets]


# The grid of regions a Check also searches with --region-grid when the whole image matched
# nothing: half the side on a 3 x 3 grid and 70 % of it at the corners (docs/quality-history.md).
REGIONS: list[Box] = grid(0.5, 3) + grid(0.7, 2)
# Regions are cut from the picture decoded at this multiple of the canvas, so that a region
# keeps its own pixels instead of an upscaled part of the canvas.
REGION_DECODE_SCALE = 2
# A window is verified cut out with this share of its side around it (half a cell for the smallest):
# its sides lie on the feature map's cells, and the copy it found may reach past them.
WINDOW_MARGIN = 0.125
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
    reference_points: bytes = b""  # its keypoints (verification.reference_points), with it
    small_canvas: np.ndarray | None = None  # the canvas of its small view, when small views are on


@dataclass(frozen=True)
class Regions:
    """The parts of a query a copy may be shown in: the boxes pasted on it (and the grid), each
    embedded from its own canvas, then the windows (contract.window_boxes), all embedded from one
    larger canvas of the whole picture."""

    boxes: list[Box]  # the embedded boxes, then the windows
    canvases: np.ndarray  # [embedded boxes, canvas, canvas, 3]
    window_canvas: np.ndarray | None  # [WINDOW_CANVAS, WINDOW_CANVAS, 3], None: no windows
    picture: Image.Image  # what regions are cut from: decoded at (at least) REGION_DECODE_SCALE x the canvas

    def is_window(self, region: int) -> bool:
        return region >= len(self.canvases)

    def crop(self, region: int) -> Image.Image:
        """The picture cut at a region; a window with WINDOW_MARGIN around it."""
        left, top, width, height = self.boxes[region]
        if self.is_window(region):
            grow = WINDOW_MARGIN * width
            left, top, width, height = left - grow, top - grow, width + 2 * grow, height + 2 * grow
        return cut(self.picture, (left, top, width, height))


def cut(picture: Image.Image, box: Box) -> Image.Image:
    """The picture cut at a box (fractions of its sides), as far as the picture reaches."""
    left, top, width, height = box
    right, bottom, left, top = min(1.0, left + width), min(1.0, top + height), max(0.0, left), max(0.0, top)
    return picture.crop(
        (
            round(left * picture.width),
            round(top * picture.height),
            round(right * picture.width),
            round(bottom * picture.height),
        )
    )


@dataclass(frozen=True)
class Preprocessor:
    """What a Check makes of an image comes from at most two decodes: the canvas from one at the
    canvas's side (a JPEG's DCT scaling makes it cheap, and every stored feature was made so),
    everything else (the verification picture, the regions, the geometric check's picture) from one
    at `decode_side`, the side the largest of them needs. An image that is not a JPEG decodes whole
    whatever the side: its one decode serves both. Enrolment (`describe`) keeps the decodes its
    stored data was always made from."""

    canvas_size: int  # the square canvas Triton embeds
    limits: Limits
    budget: DecodeBudget | None
    keypoints: bool  # enrolment stores ORB keypoints (the geometric check is on)
    references: bool = False  # enrolment stores a verification reference (verification is on)
    small_view_side: int = 0  # enrolment also embeds the picture shrunk to this side (0: not)

    @property
    def decode_side(self) -> int:
        sides = [self.canvas_size * REGION_DECODE_SCALE, verification.QUERY_SIDE]
        return max(sides + [geometry.MAX_SIDE] if self.keypoints else sides)

    def decode(self, data: bytes, side: int = 0, then=None):
        """The image decoded for `side` (a JPEG's draft scale; 0: `decode_side`), or what `then` makes
        of it while its decode is counted in the budget (imaging.decode)."""
        metrics.DECODES.inc()
        return decode(data, side or self.decode_side, self.limits, self.budget, then)

    def canvas_of(self, picture: Image.Image) -> np.ndarray:
        """A picture decoded for the canvas as the canvas_size x canvas_size RGB uint8 array Triton embeds."""
        return to_canvas(picture, self.canvas_size)

    def canvas(self, data: bytes) -> np.ndarray:
        return self.decode(data, side=self.canvas_size, then=self.canvas_of)

    def canvas_and_picture(self, data: bytes) -> tuple[np.ndarray, Image.Image | None]:
        """The canvas, and for an image that is not a JPEG (decoded whole whatever the side) the
        picture the other stages use too, reduced to `decode_side` as a JPEG's draft scale would
        be: one decode serves both, and no more than that is kept of it. None for a JPEG, which is
        decoded again at `decode_side` if a stage asks for more pixels."""

        def made(picture: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
            return self.canvas_of(picture), None if is_jpeg(data) else reduced(picture, self.decode_side)

        return self.decode(data, side=self.canvas_size, then=made)

    def describe(self, data: bytes) -> "Described":
        """The canvas, and what enrolment stores beside the feature when it is on, each from the
        decode it was always made from (stored records stay alike whenever they were enrolled): the
        small view from the canvas's, the reference from one at verification's QUERY_SIDE, the
        keypoints from one at the geometric check's side (one decode serves all for an image that
        is not a JPEG, made while that decode is counted in the budget)."""
        if not is_jpeg(data):
            return self.decode(data, side=self.canvas_size, then=lambda picture: self._described(lambda _: picture))
        return self._described(functools.cache(lambda side: self.decode(data, side=side)))

    def _described(self, at) -> "Described":
        """What enrolment stores, of the picture decoded `at(side)` for each side."""
        for_canvas = at(self.canvas_size)
        keypoints = geometry.keypoints(at(geometry.MAX_SIDE)) if self.keypoints else b""
        reference = verification.reference(at(verification.QUERY_SIDE)) if self.references else b""
        points = verification.reference_points(reference) if reference else b""
        small = to_canvas(shrunk(for_canvas, self.small_view_side), self.canvas_size) if self.small_view_side else None
        return Described(self.canvas_of(for_canvas), keypoints, reference, points, small)

    def regions(self, picture: Image.Image, with_grid: bool, with_windows: bool = False) -> Regions:
        """The boxes pasted on the (decoded) picture (media/insets.py), then REGIONS if `with_grid`,
        each with its canvas; then the windows if `with_windows`."""
        boxes = insets.boxes(picture) + (REGIONS if with_grid else [])
        canvases = np.zeros((len(boxes), self.canvas_size, self.canvas_size, 3), np.uint8)
        for i, box in enumerate(boxes):
            canvases[i] = to_canvas(cut(picture, box), self.canvas_size)
        if not with_windows:
            return Regions(boxes, canvases, None, picture)
        window_canvas = to_canvas(picture, contract.canvas_size(contract.WINDOW_INPUT))
        return Regions(boxes + contract.window_boxes(), canvases, window_canvas, picture)
