"""Verification: is a candidate the same picture as the query, or a look-alike?

A global descriptor puts another pose of a stick figure, a locked padlock for an open one or a
flag with another emblem as close to a drawing as a cropped copy is. After aligning the two
pictures, though, a copy agrees with its original almost everywhere, while a look-alike leaves at
least one region that disagrees. The residual: align the query to the candidate's stored
reference (a 256 px colour thumbnail, ~10 KB per record) by SIFT matches and a RANSAC similarity
refined to affine, and by ECC on the trimmed pictures squashed square, each with the query and
its mirror; fit brightness and contrast on the lightness; the residual is the worst cell of an
8 x 8 grid of |difference| / the candidate's contrast, for the best alignment. Copies (re-encoded,
cropped, bordered, rotated) score ~0.1-0.5; look-alikes 0.6 and more. docs/quality.md has the
measurements; the decision uses it as score - weight x min(residual, cap) (core/checking.py).
"""

import contextlib
import io

import cv2
import numpy as np
from PIL import Image, ImageOps

REFERENCE_SIDE = 256
REFERENCE_QUALITY = 90
QUERY_SIDE = 384
WORK = 128  # the side residuals are computed at
GRID = 8
MIN_INLIERS = 6
RATIO = 0.8
NO_ALIGNMENT = 9.0  # the residual when nothing aligns
# A reference whose lightness varies less than this (std, of 255) has too little structure to
# align a query to: a faint pattern, a near-plain picture. Verification cannot judge it.
MIN_STRUCTURE = 8.0


def reference(picture: Image.Image) -> bytes:
    """What a record stores to be verified against: a small colour JPEG of it."""
    thumbnail = picture.convert("RGB")
    thumbnail.thumbnail((REFERENCE_SIDE, REFERENCE_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumbnail.save(out, "JPEG", quality=REFERENCE_QUALITY)
    return out.getvalue()


def picture_of(reference_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(reference_bytes)).convert("RGB")


def residual(query: Image.Image, reference_bytes: bytes) -> float | None:
    """The query's residual against a stored reference (lower: more surely the same picture);
    None when the reference has too little structure to tell."""
    candidate = picture_of(reference_bytes)
    candidate_grey = _grey(candidate, REFERENCE_SIDE)
    if candidate_grey.std() < MIN_STRUCTURE:
        return None
    candidate_points = _sift(candidate_grey)
    candidate_lab = _lab(candidate, WORK)
    query_grey = _grey(query, QUERY_SIDE)
    found = []
    for mirrored in (False, True):
        shown = query.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else query
        grey = query_grey[:, ::-1].copy() if mirrored else query_grey
        found.append(_by_keypoints(shown, grey, candidate_grey, candidate_points, candidate_lab))
        found.append(_by_ecc(shown, candidate_lab))
    return min(found)


def _grey(picture: Image.Image, side: int) -> np.ndarray:
    grey = ImageOps.grayscale(picture)
    grey.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(grey)


def _lab(picture: Image.Image, side: int) -> np.ndarray:
    small = picture.copy()
    small.thumbnail((side, side))
    return cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2LAB).astype(np.float32)


def _sift(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, descriptors = cv2.SIFT_create(nfeatures=500).detectAndCompute(grey, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.array([point.pt for point in found], np.float32), descriptors


def _by_keypoints(query, query_grey, candidate_grey, candidate_points, candidate_lab) -> float:
    """Aligned by SIFT matches: the query's lightness warped onto the candidate's thumbnail."""
    transform = _fit(_sift(query_grey), candidate_points)
    if transform is None:
        return NO_ALIGNMENT
    height, width = candidate_lab.shape[:2]
    scale = width / candidate_grey.shape[1]
    to_work = (np.diag([scale, scale, 1.0]) @ np.vstack([transform, [0, 0, 1]]))[:2]
    query_lab = _lab(query, QUERY_SIDE)
    warped = cv2.warpAffine(query_lab, to_work, (width, height), flags=cv2.INTER_AREA)
    inside = np.full(query_lab.shape[:2], 255, np.uint8)
    valid = cv2.warpAffine(inside, to_work, (width, height), flags=cv2.INTER_NEAREST) > 0
    return _worst_block(warped, candidate_lab, _eroded(valid))


def _by_ecc(query, candidate_lab) -> float:
    """Aligned by ECC (affine) on both pictures trimmed of plain margins and squashed square."""
    query_lab = _lab(query, REFERENCE_SIDE)
    squashed = [_squash(image) for image in (query_lab, candidate_lab)]
    transform = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    with contextlib.suppress(cv2.error):  # not converged: compared as they are
        _, transform = cv2.findTransformECC(squashed[1][..., 0], squashed[0][..., 0], transform,
                                            cv2.MOTION_AFFINE, criteria, None, 3)  # fmt: skip
    inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(squashed[0], transform, (WORK, WORK), flags=inverse)
    inside = np.full((WORK, WORK), 255, np.uint8)
    valid = cv2.warpAffine(inside, transform, (WORK, WORK), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    return _worst_block(warped, squashed[1], _eroded(valid))


def _squash(lab: np.ndarray) -> np.ndarray:
    top, bottom, left, right = _trimmed(lab[..., 0])
    return cv2.resize(lab[top:bottom, left:right], (WORK, WORK), interpolation=cv2.INTER_AREA)


def _trimmed(grey: np.ndarray, passes: int = 2, tolerance: float = 12.0) -> tuple[int, int, int, int]:
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


def _eroded(valid: np.ndarray) -> np.ndarray:
    return cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _fit(query: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
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
    if refined is not None and _plausible(refined):
        transform = refined
    return transform if _plausible(transform) else None


def _plausible(transform: np.ndarray) -> bool:
    """Not degenerate: a scale within 1/20-20 and an aspect change under 3x."""
    singular = np.linalg.svd(transform[:, :2], compute_uv=False)
    return singular[1] > 1e-3 and 0.05 < singular[0] < 20 and singular[0] / singular[1] < 3


def _worst_block(query: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> float:
    """The worst grid cell's mean |query lightness - (a x candidate's + b)| / its contrast."""
    if valid.sum() < 200:
        return NO_ALIGNMENT
    query_l = cv2.GaussianBlur(query, (0, 0), 1.0)[..., 0]
    candidate_l = cv2.GaussianBlur(candidate, (0, 0), 1.0)[..., 0]
    design = np.stack([candidate_l[valid], np.ones(int(valid.sum()), np.float32)], 1)
    (gain, offset), *_ = np.linalg.lstsq(design, query_l[valid], rcond=None)
    contrast = abs(gain) * max(float(candidate_l[valid].std()), 8.0) + 1e-6
    difference = np.abs(query_l - (gain * candidate_l + offset)) / contrast
    height, width = valid.shape
    rows, columns = np.linspace(0, height, GRID + 1).astype(int), np.linspace(0, width, GRID + 1).astype(int)
    cells = []
    for i in range(GRID):
        for j in range(GRID):
            inside = valid[rows[i] : rows[i + 1], columns[j] : columns[j + 1]]
            if inside.size and inside.mean() >= 0.7:
                cells.append(difference[rows[i] : rows[i + 1], columns[j] : columns[j + 1]][inside].mean())
    return float(max(cells)) if cells else NO_ALIGNMENT
