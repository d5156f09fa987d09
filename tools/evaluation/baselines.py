"""Baselines a user would pick instead of neardup: PDQ (Meta) and pHash, as exhaustive Hamming search."""

import io

import numpy as np
from PIL import Image


def pdq_bits(data: bytes) -> np.ndarray:
    import pdqhash

    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    bits, _quality = pdqhash.compute(image)
    return bits.astype(bool)


def phash_bits(data: bytes) -> np.ndarray:
    import imagehash

    return imagehash.phash(Image.open(io.BytesIO(data)).convert("RGB")).hash.flatten()


HASHES = {"pdq": pdq_bits, "phash": phash_bits}


class HammingIndex:
    def __init__(self, keys: list[str], bits: list[np.ndarray]):
        self.keys = keys
        self.bits = np.array(bits, dtype=bool)

    def nearest(self, query: np.ndarray) -> tuple[str, int]:
        distances = (self.bits != query).sum(axis=1)
        best = int(np.argmin(distances))
        return self.keys[best], int(distances[best])
