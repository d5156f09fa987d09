"""Where a copy may be shown inside a larger picture: the rectangles pasted on it.

An inset, a collage's tile, the picture in a screenshot of a post or a meme's frame has straight
edges where the picture it was pasted on jumps in lightness. A box is four such edges (or the
picture's own border for at most two of them), each stepping along most of its length. The region
stage of a Check (core/checking.py) embeds and searches the boxes found: a few views, where a grid
of regions costs 13 and cuts the copy wherever the grid lies.
"""

import cv2
import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # left, top, width, height: fractions of the picture's sides

SIDE = 256  # the picture is searched at this longest side
STEP = 20.0  # least lightness step (of 255) across an edge, between the 2 pixels either side
COVER = 0.6  # least share of each edge's length that steps
SMALLEST, LARGEST = 0.15, 0.85  # a box's sides, as shares of the picture's
LINES = 24  # the strongest rows and columns of steps that boxes are made of, each way
OVERLAP = 0.5  # a box overlapping a better one this much (intersection over union) is the same box


def boxes(picture: Image.Image, most: int = 3) -> list[Box]:
    """The `most` best boxes, those with the most steady edges first."""
    grey = np.asarray(picture.convert("L"), np.float32)
    scale = SIDE / max(grey.shape)
    grey = cv2.resize(
        grey,
        (max(16, round(grey.shape[1] * scale)), max(16, round(grey.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )
    height, width = grey.shape
    across_rows, across_columns = _steps(grey) >= STEP, _steps(grey.T).T >= STEP
    across_rows[[0, height]], across_columns[:, [0, width]] = True, True  # the border is an edge
    # stepping pixels before each position of each row boundary, and of each column boundary
    along_rows = np.pad(np.cumsum(across_rows, 1), ((0, 0), (1, 0)))
    along_columns = np.pad(np.cumsum(across_columns, 0), ((1, 0), (0, 0)))
    rows = _lines(across_rows.sum(1), SMALLEST * width * COVER)
    columns = _lines(across_columns.sum(0), SMALLEST * height * COVER)
    top, bottom = _pairs(rows, height)
    left, right = _pairs(columns, width)
    if not len(top) or not len(left):
        return []
    top, bottom, left, right = top[:, None], bottom[:, None], left[None, :], right[None, :]
    wide, high = (right - left).astype(np.float32), (bottom - top).astype(np.float32)
    cover = np.minimum.reduce(
        [
            (along_rows[top, right] - along_rows[top, left]) / wide,
            (along_rows[bottom, right] - along_rows[bottom, left]) / wide,
            (along_columns[bottom, left] - along_columns[top, left]) / high,
            (along_columns[bottom, right] - along_columns[top, right]) / high,
        ]
    )
    borders = (top == 0).astype(int) + (bottom == height) + (left == 0) + (right == width)
    found: list[Box] = []
    for i, j in sorted(np.argwhere((cover >= COVER) & (borders <= 2)), key=lambda at: -cover[at[0], at[1]]):
        box = (left[0, j] / width, top[i, 0] / height, wide[0, j] / width, high[i, 0] / height)
        if all(_overlap(box, better) < OVERLAP for better in found):
            found.append(tuple(float(side) for side in box))
        if len(found) == most:
            break
    return found


def _steps(grey: np.ndarray) -> np.ndarray:
    """|mean of the 2 rows after - mean of the 2 rows before| at each boundary between rows (0 at
    the first two and last two): a pasted edge, even one blurred over a pixel by resampling."""
    height = grey.shape[0]
    summed = np.pad(np.cumsum(grey, 0), ((1, 0), (0, 0)))
    steps = np.zeros((height + 1, grey.shape[1]), np.float32)
    at = np.arange(2, height - 1)
    steps[at] = np.abs((summed[at + 2] - summed[at]) - (summed[at] - summed[at - 2])) / 2
    return steps


def _lines(stepping: np.ndarray, least: float) -> np.ndarray:
    """The picture's two borders and the LINES boundaries with the most stepping pixels (at least
    `least`), each the most of its 5 neighbours."""
    size = len(stepping) - 1
    peaks = [
        at for at in range(1, size) if stepping[at] >= least and stepping[at] == stepping[max(0, at - 2) : at + 3].max()
    ]
    strongest = sorted(peaks, key=lambda at: -stepping[at])[:LINES]
    return np.array(sorted({0, size, *strongest}))


def _pairs(lines: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pair of lines a box side apart: (first, second) arrays."""
    first, second = np.meshgrid(lines, lines, indexing="ij")
    apart = (second - first >= SMALLEST * size) & (second - first <= LARGEST * size)
    return first[apart], second[apart]


def _overlap(a: Box, b: Box) -> float:
    """Intersection over union."""
    wide = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    high = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    shared = wide * high
    return shared / (a[2] * a[3] + b[2] * b[3] - shared)
