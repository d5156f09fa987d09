"""The background set for score normalisation."""

import numpy as np
import pytest

from service.storage.background import Background


def test_similarity_is_the_mean_over_the_k_nearest():
    features = np.eye(4, 512, dtype=np.float32)
    query = np.zeros(512, np.float32)
    query[:3] = [0.8, 0.6, 0.0]
    assert Background(features, k=2).similarity(query) == pytest.approx(0.7)
    assert Background(features, k=1).similarity(query) == pytest.approx(0.8)
    assert Background(np.zeros((0, 512)), k=5).similarity(query) == 0.0


def test_saved_features_load_only_for_the_same_model(tmp_path):
    features = np.eye(3, 512, dtype=np.float32)
    Background.save(tmp_path, features, "sscd@224")
    assert len(Background.load(tmp_path, "sscd@224", k=5)) == 3
    assert len(Background.load(tmp_path, "sscd_distilled@224", k=5)) == 0
    assert len(Background.load(tmp_path / "elsewhere", "sscd@224", k=5)) == 0
