"""Aligning a query to a candidate picture: SIFT matches with a RANSAC similarity refined to
affine, pictures trimmed of plain margins (for ECC on the two squashed square), and what an
alignment does to the picture (its stretch). media/verification.py compares what they align."""

import cv2
import numpy as np

MIN_INLIERS = 6
RATIO = 0.8
# Alignments turning the picture more than this are not copies (a left arrow is a turned up one).
MAX_ROTATION_DEGREES = 20.0


def keypoints(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, descriptors = cv2.SIFT_create(nfeatures=500).detectAndCompute(grey, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.array([point.pt for point in found], np.float32), descriptors


def fit(query: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """A similarity transform from ratio-tested matches (RANSAC), refined to affine on its inliers."""
    (query_points, query_descriptors), (candidate_points, candidate_descriptors) = query, candidate
    if len(query_descriptors) < 2 or len(candidate_descriptors) < 2:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query_descriptors, candidate_descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:
        return None
    source = query_points[[m.queryIdx for m in good]]
    target = candidate_points[[m.trainIdx for m in good]]
    transform, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=4.0,
                                                  maxIters=2000)  # fmt: skip
    if transform is None or mask.sum() < MIN_INLIERS:
        return None
    inliers = mask.ravel().astype(bool)
    refined, _ = cv2.estimateAffine2D(source[inliers], target[inliers], method=cv2.RANSAC, ransacReprojThreshold=4.0)
    if refined is not None and plausible(refined):
        transform = refined
    return transform if plausible(transform) else None


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
