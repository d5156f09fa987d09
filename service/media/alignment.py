"""Aligning a query to a candidate picture: SIFT matches with a RANSAC similarity and its
refinement to affine, pictures trimmed of plain margins (for ECC on the two squashed square), the
query placed as a crop of the candidate (template matching), what an alignment does to the
picture (its stretch), and the pictures no alignment can be trusted on (repeating patterns).
media/verification.py compares what they align."""

import functools

import cv2
import numpy as np

MIN_INLIERS = 6
RATIO = 0.8
# Alignments turning the picture more than this are not copies (a left arrow is a turned up one).
MAX_ROTATION_DEGREES = 20.0
# A picture whose detail correlates with itself shifted MIN_PERIOD or more pixels at least this much
# (of unshifted) repeats: aligned to another pattern of its kind at another scale or phase, it
# agrees as closely as a copy does (two dot grids), so verification cannot tell.
REPEAT_CORRELATION = 0.9
MIN_PERIOD = 6
SHRINK_BELOW = 0.8  # a query mapped smaller than this is shrunk by area first
# A candidate is compared at the query's resolution when the query is upscaled more than this.
RESOLUTION_SLACK = 1.25
FRAME_EDGE = 2  # pixels of the frame's edge left out of the comparison
# A crop is looked for with its side at these fractions of the largest that fits inside the
# candidate (a crop of 30 % of the area: about 0.55), then at finer ones around the best.
CROP_SCALES = np.geomspace(0.4, 1.0, 16)
CROP_REFINED = np.geomspace(0.97, 1.03, 6)
# A query whose best placement at CROP_SCALES correlates less than this is no crop of the candidate:
# of the pairs verified by 300 Checks of the catalogue benchmark (seed 0), every crop verification
# counted correlated 0.93 or more, and 81 % of the others less than this (docs/performance.md).
CROP_LEAST_CORRELATION = 0.8


def keypoints(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, descriptors = cv2.SIFT_create(nfeatures=500).detectAndCompute(grey, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.array([point.pt for point in found], np.float32), descriptors


def fits(query: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """A similarity transform from ratio-tested matches (RANSAC), and its refinement to affine on
    its inliers (none when they are too few or it is implausible). The refinement fits a copy
    that was stretched; a small copy's few points can also make it stretch one that was not."""
    (query_points, query_descriptors), (candidate_points, candidate_descriptors) = query, candidate
    if len(query_descriptors) < 2 or len(candidate_descriptors) < 2:
        return []
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query_descriptors, candidate_descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:
        return []
    source = query_points[[m.queryIdx for m in good]]
    target = candidate_points[[m.trainIdx for m in good]]
    transform, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=4.0, maxIters=2000
    )
    if transform is None or mask.sum() < MIN_INLIERS or not plausible(transform):
        return []
    inliers = mask.ravel().astype(bool)
    refined, _ = cv2.estimateAffine2D(source[inliers], target[inliers], method=cv2.RANSAC, ransacReprojThreshold=4.0)
    return [transform, refined] if refined is not None and plausible(refined) else [transform]


def as_crop(query_grey: np.ndarray, candidate_grey: np.ndarray) -> np.ndarray | None:
    """The query placed where it best fits inside the candidate, unturned (normalised
    cross-correlation of the lightness at CROP_SCALES, then at CROP_REFINED around the best): the
    affine map from query to candidate pixels. A small crop has too few keypoints for `fits`, and
    ECC maps whole to whole. None when the query is plain, or correlates under CROP_LEAST_CORRELATION
    wherever it is placed."""
    candidate = cv2.GaussianBlur(candidate_grey.astype(np.float32), (0, 0), 1.0)
    query = query_grey.astype(np.float32)
    (query_height, query_width), (height, width) = query.shape, candidate.shape
    largest = min(height / query_height, width / query_width)

    def placed(scale: float) -> tuple[float, tuple[int, int], tuple[int, int], float] | None:
        size = (round(query_width * largest * scale), round(query_height * largest * scale))
        if min(size) < 8 or size[0] > width or size[1] > height:
            return None
        shrinking = size[0] < query_width
        template = cv2.resize(query, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        template = cv2.GaussianBlur(template, (0, 0), 1.0)
        if template.std() < 1.0:
            return None
        _, correlation, _, at = cv2.minMaxLoc(cv2.matchTemplate(candidate, template, cv2.TM_CCOEFF_NORMED))
        return correlation, size, at, scale

    found = [place for scale in CROP_SCALES if (place := placed(scale))]
    if not found or max(found)[0] < CROP_LEAST_CORRELATION:
        return None
    found += [place for scale in max(found)[3] * CROP_REFINED if (place := placed(scale))]
    _, (crop_width, crop_height), (left, top), _ = max(found)
    x_scale, y_scale = crop_width / query_width, crop_height / query_height
    # pixel centres: query pixel u covers crop pixels from u * x_scale to (u + 1) * x_scale
    return np.array([[x_scale, 0, left + (x_scale - 1) / 2], [0, y_scale, top + (y_scale - 1) / 2]])


def plausible(transform: np.ndarray) -> bool:
    """Not degenerate: a scale within 1/20-20, an aspect change under 3x, a small rotation."""
    singular = np.linalg.svd(transform[:, :2], compute_uv=False)
    turned = abs(np.degrees(np.arctan2(transform[1, 0] - transform[0, 1], transform[0, 0] + transform[1, 1])))
    return (
        singular[1] > 1e-3
        and 0.05 < singular[0] < 20
        and singular[0] / singular[1] < 3
        and turned <= MAX_ROTATION_DEGREES
    )


def stretch(transform: np.ndarray) -> float:
    """The aspect change of an affine map: its larger singular value over its smaller."""
    singular = np.linalg.svd(np.asarray(transform, np.float64)[:2, :2], compute_uv=False)
    return float(singular[0] / max(singular[1], 1e-9))


def trimmed(grey: np.ndarray, passes: int = 2, tolerance: float = 12.0) -> tuple[int, int, int, int]:
    """The box inside plain margins (borders, padding) of a lightness image."""
    top, bottom, left, right = 0, grey.shape[0], 0, grey.shape[1]
    for _ in range(passes):
        inner = grey[top:bottom, left:right]
        if inner.shape[0] < 8 or inner.shape[1] < 8:
            break
        edge = np.median(np.r_[inner[0], inner[-1], inner[:, 0], inner[:, -1]])
        busy = np.abs(inner.astype(np.float32) - edge) > tolerance
        rows, columns = np.flatnonzero(busy.mean(1) > 0.01), np.flatnonzero(busy.mean(0) > 0.01)
        if not len(rows) or not len(columns):
            break
        box = (top + rows[0], top + rows[-1] + 1, left + columns[0], left + columns[-1] + 1)
        if box == (top, bottom, left, right):
            break
        top, bottom, left, right = box
    return top, bottom, left, right


def sides(box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Height and width."""
    top, bottom, left, right = box
    return bottom - top, right - left


def squash(lab: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray:
    """The box of a Lab picture resized to side x side."""
    top, bottom, left, right = box
    enlarged = bottom - top < side or right - left < side  # a small query: smoothly
    return cv2.resize(
        lab[top:bottom, left:right], (side, side), interpolation=cv2.INTER_LINEAR if enlarged else cv2.INTER_AREA
    )


def shrunk_for(lab: np.ndarray, to_work: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The query shrunk by area to about the scale `to_work` maps it to, and the map from the
    shrunk query: a warp that shrinks samples pixels, and aliases the query's fine lines."""
    if scale >= SHRINK_BELOW:
        return lab, to_work
    height, width = lab.shape[:2]
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    x_factor, y_factor = width / size[0], height / size[1]
    # pixel centres: the shrunk pixel x covers the query's x_factor * x ... x_factor * (x + 1)
    from_shrunk = np.array([[x_factor, 0, (x_factor - 1) / 2], [0, y_factor, (y_factor - 1) / 2], [0, 0, 1]])
    return cv2.resize(lab, size, interpolation=cv2.INTER_AREA), (np.vstack([to_work, [0, 0, 1]]) @ from_shrunk)[:2]


def repeats(grey: np.ndarray, side: int) -> bool:
    """Is the picture (squashed side x side) a repeating pattern (dots, a grid, stripes)? Its detail
    (the picture less its blur) correlates with itself shifted by a period, over the part that
    still overlaps, almost as well as unshifted: at shifts from MIN_PERIOD to a quarter of the side."""
    square = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = square - cv2.GaussianBlur(square, (0, 0), 3)
    padded = (2 * side, 2 * side)  # zero-padded: the correlation does not wrap around
    spectrum = np.fft.fft2(detail, padded)
    correlation = np.real(np.fft.ifft2(spectrum * np.conj(spectrum)))
    overlap, periods = _overlap_and_periods(side)
    per_pixel = np.fft.fftshift(correlation / overlap)
    return float(per_pixel[periods].max()) >= REPEAT_CORRELATION * float(per_pixel[side, side])


@functools.cache
def _overlap_and_periods(side: int) -> tuple[np.ndarray, np.ndarray]:
    """For `repeats` at `side`: how many pixels overlap at each shift (unshifted order), and which
    shifts (centred) are periods looked at."""
    padded = (2 * side, 2 * side)
    ones = np.fft.fft2(np.ones((side, side), np.float32), padded)
    overlap = np.maximum(np.real(np.fft.ifft2(ones * np.conj(ones))), 1.0)
    shifts = np.hypot(*np.mgrid[-side:side, -side:side])
    return overlap, (shifts >= MIN_PERIOD) & (shifts <= side / 4)


def at_resolution(lab: np.ndarray, x_upscale: float, y_upscale: float) -> np.ndarray:
    """The candidate as it looks at the query's resolution: shrunk by the query's upscaling and
    brought back to its size."""
    if max(x_upscale, y_upscale) <= RESOLUTION_SLACK:
        return lab
    height, width = lab.shape[:2]
    small = (max(2, round(width / max(x_upscale, 1.0))), max(2, round(height / max(y_upscale, 1.0))))
    shrunk = cv2.resize(lab, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (width, height), interpolation=cv2.INTER_LINEAR)


def inner(valid: np.ndarray) -> np.ndarray:
    """The valid pixels off the edges of the query and of the frame: a copy shown inside another
    picture bleeds into the frame's edge through the blur and the alignment's error."""
    inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    inner[:FRAME_EDGE], inner[-FRAME_EDGE:], inner[:, :FRAME_EDGE], inner[:, -FRAME_EDGE:] = False, False, False, False
    return inner
