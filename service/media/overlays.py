"""Which pixels of an aligned query an overlay covers: colours its candidate has nowhere.

A caption or a sticker is painted in colours of its own, while a look-alike drawing is drawn in
its original's inks (another pose, a moved hand, a badge added in the same colours). So where the
query shows a colour that no pixel of the candidate has (within a bin or so, the candidate's
lightness taken as it is or fitted to the query's), something was laid over the picture; those
pixels and their outline are what cells.py leaves out beside overlays. A query foreign over more
than MOST_COVERED of the picture is not a copy under overlays (a recolouring, another picture),
and nothing is left out.
"""

import itertools

import cv2
import numpy as np

BIN = 8  # Lab (0-255 each) is binned this wide; a colour in a bin next to one of the candidate's is its own
OUTLINE = 2  # pixels around a foreign colour left out too: the overlay's outline and the blur
MOST_COVERED = 0.35  # (measured on the catalogue benchmark: docs/quality-history.md)
_SIDE = 256 // BIN + 2  # the bins and a margin of one either side


def covered(query: np.ndarray, candidate: np.ndarray, fitted_lightness: np.ndarray, valid: np.ndarray):
    """The `valid` pixels an overlay covers in two aligned Lab pictures, or None when no colour is
    foreign or too many are. The candidate's colours are taken as they are and with its lightness
    fitted to the query's (a brightness or contrast edit), whichever leaves fewer pixels foreign:
    a large caption pulls the fit, and then the picture's own white looks foreign."""
    fitted = np.dstack([fitted_lightness, candidate[..., 1:]])
    found = [_foreign(query, colours, valid) for colours in (candidate, fitted)]
    if not all(mask.any() for mask in found):
        return None
    side = 2 * OUTLINE + 1
    grown = (cv2.dilate(min(found, key=np.sum).astype(np.uint8), np.ones((side, side), np.uint8)) > 0) & valid
    return grown if grown.sum() <= MOST_COVERED * valid.sum() else None


def _foreign(query: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The valid query pixels whose colour is in no bin next to one the candidate has."""
    palette = np.zeros((_SIDE,) * 3, bool)
    palette[tuple(_bins(candidate[valid]).T)] = True
    own = np.zeros_like(palette)
    for shift in itertools.product((-1, 0, 1), repeat=3):
        own |= np.roll(palette, shift, (0, 1, 2))
    return ~own[tuple(np.moveaxis(_bins(query), -1, 0))] & valid


def _bins(lab: np.ndarray) -> np.ndarray:
    return np.clip(lab // BIN, 0, 256 // BIN - 1).astype(np.intp) + 1
