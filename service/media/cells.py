"""Comparing a query aligned onto a candidate, cell by cell (media/verification.py aligns them).

Per pixel: |query lightness - (gain x candidate's + offset)| / the candidate's contrast, gain and
offset fitted, each query pixel against the best of the candidate's pixels one pixel around it.
Per cell of a GRID x GRID grid: the mean of that, and the distance of the cells' mean colours
(a*b*; where the hues agree, the candidate's chroma scaled by one fitted gain: a copy made more or
less saturated fits, another hue shows). The comparison's residual is its worst cell.

Beside overlays: a caption or a sticker adds structure where the picture had less. The residual
beside overlays leaves out up to OVERLAY_CELLS of the worst cells, as long as the query shows
OVERLAY_STRUCTURE times the candidate's structure there. A look-alike's different part (another
pose, another emblem) is as busy in both pictures and stays counted; where a part moved, it also
took structure away elsewhere (the candidate OVERLAY_STRUCTURE times as busy as the query, in a
cell differing by LOST_RESIDUAL or more), which an overlay does not do, and then no cell is left
out. An overlay over busy parts is recognised by its colours instead (media/overlays.py: colours
the candidate has nowhere): for the best alignment (media/verification.py), the residual beside
overlays is also taken beside those pixels, gain and offset fitted without them, and the smaller
of the two counts. A part only added
(another hand on a clock) cannot be told from an overlay: the Judge forgives overlays where the
score already says duplicate, and a little under it only those in colours of their own.
"""

import cv2
import numpy as np

from service.media import overlays

GRID = 8
# A picture whose lightness varies less than this (std, of 255) has too little structure to align
# to: a faint pattern, a near-plain picture. Nothing can be judged on it.
MIN_STRUCTURE = 8.0
# The query's lightness fitted as gain x the candidate's + offset: under this gain the query has
# lost the candidate's structure (a plain picture fits any candidate with gain 0).
MIN_GAIN = 0.2
# Each query pixel is compared with the nearest match among the candidate's pixels this close: an
# alignment a fraction of a pixel off, or resampled differently, lights up every edge of a detailed
# copy, while a look-alike's different part stays different.
NEAR_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
# Overlays: at most this many cells left out (3 of 64: a sticker, a word), where the query's
# structure (lightness std over its picture's) is at least OVERLAY_STRUCTURE times the candidate's
# and at least OVERLAY_LEAST (measured on the catalogue benchmark: docs/quality-history.md).
OVERLAY_CELLS = 3
OVERLAY_STRUCTURE = 2.0
OVERLAY_LEAST = 0.25
LOST_RESIDUAL = 0.5  # a cell where the query lost the candidate's structure and differs this much
FOREIGN_LEAST_CELLS = 20  # cells left beside an overlay's colours for its residual to count
# The chroma gain fitted before colours are compared: saturation, brightness and contrast changes
# scale a picture's a*b* by 0.2-2.4 in the benchmark's `colour` family (docs/quality-history.md).
CHROMA_GAINS = (0.25, 2.5)
SAME_HUES = 0.8  # the least cosine of the two pictures' a*b* vectors for a gain to be fitted


def worst(query: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> tuple[float, float, float] | None:
    """The worst cell's lightness and colour residuals of two aligned Lab pictures over the `valid`
    pixels, and the lightness one beside overlays; None when they cannot be compared (too little
    overlap, a plain part, a flattened query)."""
    if valid.sum() < 200:
        return None
    query, candidate = cv2.GaussianBlur(query, (0, 0), 1.0), cv2.GaussianBlur(candidate, (0, 0), 1.0)
    query_l, candidate_l = query[..., 0], candidate[..., 0]
    if candidate_l[valid].std() < MIN_STRUCTURE:  # the part compared is plain: anything fits it
        return None
    fit = _fit(query_l, candidate_l, valid)
    if fit is None:
        return None
    lightness = _lightness(query_l, candidate_l, valid, *fit)
    if not len(lightness):
        return None
    colour = _colour(query[..., 1:], candidate[..., 1:], valid)
    counted = _beside_overlays(lightness, _structure(query_l, valid), _structure(candidate_l, valid))
    return float(lightness.max()), float(colour.max()), float(lightness[counted].max())


def _fit(query_l: np.ndarray, candidate_l: np.ndarray, where: np.ndarray) -> tuple[float, float] | None:
    """The query's lightness as gain x the candidate's + offset over `where`; None under MIN_GAIN."""
    design = np.stack([candidate_l[where], np.ones(int(where.sum()), np.float32)], 1)
    (gain, offset), *_ = np.linalg.lstsq(design, query_l[where], rcond=None)
    return (float(gain), float(offset)) if abs(gain) >= MIN_GAIN else None


def _lightness(query_l, candidate_l, where, gain: float, offset: float) -> np.ndarray:
    """Each cell's mean |query - fitted candidate| / contrast over `where` (cells mostly inside it)."""
    contrast = abs(gain) * max(float(candidate_l[where].std()), 8.0)
    fitted = gain * candidate_l + offset
    difference = np.min([np.abs(query_l - np.roll(fitted, shift, (0, 1))) for shift in NEAR_SHIFTS], axis=0)
    return _per_cell(difference / contrast, where)


def _colour(query_ab: np.ndarray, candidate_ab: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each cell's distance of the mean a*b* colours; where the query has the candidate's hues
    (their chroma vectors' cosine at least SAME_HUES), the candidate's chroma first scaled by the
    gain that fits the query's best (within CHROMA_GAINS). A red turned blue is compared as it is."""
    query_ab, candidate_ab = query_ab - 128.0, candidate_ab - 128.0  # OpenCV's neutral a*b* is 128
    query_valid, candidate_valid = query_ab[valid], candidate_ab[valid]
    product, candidate_power = float((query_valid * candidate_valid).sum()), float((candidate_valid**2).sum())
    cosine = product / max(np.sqrt(candidate_power * float((query_valid**2).sum())), 1e-6)
    gain = min(max(product / max(candidate_power, 1e-6), CHROMA_GAINS[0]), CHROMA_GAINS[1])
    return np.linalg.norm(_per_cell(query_ab - (gain if cosine >= SAME_HUES else 1.0) * candidate_ab, valid), axis=-1)


def beside_foreign_colours(query: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """The worst cell's lightness and colour residuals of two aligned Lab pictures beside the pixels
    an overlay's own colours cover (media/overlays.py), gain and offset fitted without them; inf
    when none are, or too few cells are left."""
    nothing = (float("inf"), float("inf"))
    query, candidate = cv2.GaussianBlur(query, (0, 0), 1.0), cv2.GaussianBlur(candidate, (0, 0), 1.0)
    query_l, candidate_l = query[..., 0], candidate[..., 0]
    fit = _fit(query_l, candidate_l, valid) if valid.sum() >= 200 else None
    if fit is None:
        return nothing
    covered = overlays.covered(query, candidate, fit[0] * candidate_l + fit[1], valid)
    kept = valid & ~covered if covered is not None else None
    if kept is None or kept.sum() < 200:
        return nothing
    refit = _fit(query_l, candidate_l, kept)
    lightness = _lightness(query_l, candidate_l, kept, *refit) if refit else []
    if len(lightness) < FOREIGN_LEAST_CELLS:
        return nothing
    return float(lightness.max()), float(_colour(query[..., 1:], candidate[..., 1:], kept).max())


def _structure(lightness: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each cell's lightness std over the whole picture's (at least 8 of 255)."""
    values = lightness.astype(np.float64)
    spread = np.sqrt(np.maximum(_per_cell(values**2, valid) - _per_cell(values, valid) ** 2, 0.0))
    return spread / max(float(lightness[valid].std()), 8.0)


def _beside_overlays(lightness: np.ndarray, query_structure: np.ndarray, candidate_structure: np.ndarray):
    """Which cells count beside overlays: all but the worst ones an overlay explains."""
    counted = np.ones(len(lightness), bool)
    lost = candidate_structure >= np.maximum(OVERLAY_STRUCTURE * query_structure, OVERLAY_LEAST)
    if (lost & (lightness >= LOST_RESIDUAL)).any():
        return counted
    for cell in np.argsort(-lightness)[:OVERLAY_CELLS]:
        added = query_structure[cell] >= max(OVERLAY_STRUCTURE * candidate_structure[cell], OVERLAY_LEAST)
        if not added or counted.sum() == 1:
            break
        counted[cell] = False
    return counted


def _per_cell(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The mean of `values` (per pixel, of any depth) over each grid cell's valid pixels, for the
    cells mostly inside `valid`, row by row."""
    height, width = valid.shape
    rows, columns = np.linspace(0, height, GRID + 1).astype(int), np.linspace(0, width, GRID + 1).astype(int)
    area = np.outer(np.diff(rows), np.diff(columns))
    weight = valid.astype(np.float64)
    count = _sums(weight, rows[:-1], columns[:-1])
    kept = (area > 0) & (count >= 0.7 * area)  # an empty cell (a side under GRID) is never kept
    weighted = values * (weight if values.ndim == 2 else weight[..., None])
    sums = _sums(weighted, rows[:-1], columns[:-1])[kept]
    return sums / (count[kept] if values.ndim == 2 else count[kept][:, None])


def _sums(values: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Sums over the cells starting at `rows` x `columns`."""
    return np.add.reduceat(np.add.reduceat(values, rows, axis=0), columns, axis=1)
