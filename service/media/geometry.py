"""The geometric check: do two images share enough keypoints under one homography?

The seed's verification, kept for borderline decisions: ORB keypoints on the grey images,
brute-force Hamming matching with a 0.6 ratio test, a RANSAC homography, and more than 10
inliers (trying the query and its mirror) means the same picture. The enrolled image's
keypoints are computed at enrolment and stored in LMDB, so no original file is needed.
"""

import struct

import cv2
import numpy as np
from PIL import Image, ImageOps

MAX_SIDE = 512
FEATURES = 500
RATIO = 0.6
MIN_INLIERS = 10
_COUNT = struct.Struct("<I")


def keypoints(image: Image.Image) -> bytes:
    """ORB keypoints of an RGB image, packed: count, then float32 (x, y) pairs, then 32-byte descriptors."""
    return pack(*_detect(_grey(image)))


def _grey(image: Image.Image) -> np.ndarray:
    grey = ImageOps.grayscale(image)
    grey.thumbnail((MAX_SIDE, MAX_SIDE))
    return np.asarray(grey)


def _detect(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, descriptors = cv2.ORB_create(FEATURES).detectAndCompute(grey, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.array([k.pt for k in found], np.float32), descriptors


def pack(points: np.ndarray, descriptors: np.ndarray) -> bytes:
    return _COUNT.pack(len(points)) + points.astype(np.float32).tobytes() + descriptors.astype(np.uint8).tobytes()


def unpack(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    (count,) = _COUNT.unpack_from(data)
    points = np.frombuffer(data, np.float32, count * 2, _COUNT.size).reshape(count, 2)
    descriptors = np.frombuffer(data, np.uint8, count * 32, _COUNT.size + count * 8).reshape(count, 32)
    return points, descriptors


def inliers(query: Image.Image, reference: bytes) -> int:
    """RANSAC homography inliers between a query image and stored keypoints; the better of the
    query and its mirror."""
    if not reference:
        return 0
    grey = _grey(query)
    return max(_inliers(_detect(grey), unpack(reference)), _inliers(_detect(grey[:, ::-1].copy()), unpack(reference)))


def _inliers(query: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> int:
    (query_points, query_descriptors), (reference_points, reference_descriptors) = query, reference
    if len(query_descriptors) < 2 or len(reference_descriptors) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query_descriptors, reference_descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 4:
        return 0
    source = query_points[[m.queryIdx for m in good]]
    target = reference_points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(source, target, cv2.RANSAC, 5.0)
    return int(mask.sum()) if mask is not None else 0
