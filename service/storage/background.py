"""Background features for score normalisation (the "normalized" decision rule).

A set of features of images known not to be enrolled (distractors). A query that is similar
to many unrelated images (a blank, a texture, a common layout) gets a high raw similarity to
everything; subtracting its mean similarity to its nearest background features, as the SSCD
paper does, corrects for that. Written by tools/build_background.py to DATA_DIR/background.npz
and read once at start-up.
"""

import logging
from pathlib import Path

import numpy as np

from service.triton.contract import DIMENSIONS

log = logging.getLogger(__name__)

FILE = "background.npz"


class Background:
    def __init__(self, features: np.ndarray, k: int):
        self.features = features.astype(np.float32)
        self.k = k

    def __len__(self) -> int:
        return len(self.features)

    def similarity(self, feature: np.ndarray) -> float:
        """Mean cosine similarity of a unit feature to its k nearest background features (0 if none)."""
        if not len(self.features):
            return 0.0
        similarities = self.features @ np.asarray(feature, dtype=np.float32)
        k = min(self.k, len(similarities))
        return float(np.partition(similarities, -k)[-k:].mean())

    @classmethod
    def load(cls, data_dir: Path, model_identity: str, k: int, dimensions: int = DIMENSIONS) -> "Background":
        path = Path(data_dir) / FILE
        empty = cls(np.zeros((0, dimensions), np.float32), k)
        if not path.exists():
            return empty
        with np.load(path) as data:
            model, features = str(data["model"]), data["features"]
        if model != model_identity:
            log.error("%s holds features of %s, the service runs %s: ignored", path, model, model_identity)
            return empty
        log.info("background set: %d features from %s", len(features), path)
        return cls(features, k)

    @staticmethod
    def save(data_dir: Path, features: np.ndarray, model_identity: str) -> Path:
        path = Path(data_dir) / FILE
        temporary = path.with_name("background.tmp.npz")
        np.savez(temporary, features=features.astype(np.float16), model=np.array(model_identity))
        temporary.replace(path)
        return path
