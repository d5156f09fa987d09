"""The Checker on a real LMDB store, with in-memory stand-ins for Triton and the vector index."""

import asyncio
import hashlib

import numpy as np
import pytest

from service.core.checking import Checker, build_checker
from service.core.decision import Policy
from service.core.judging import Judge
from service.media.imaging import Limits
from service.media.preprocess import Preprocessor
from service.storage.background import Background
from service.storage.records import Enrolment
from service.storage.store import Store
from service.storage.vector_index import IndexStats
from service.triton import contract
from service.triton.client import Descriptor
from tests.conftest import image_bytes
from tests.test_store import MODEL, unit

PICTURE = image_bytes("gnome-wood.jpg")


class FixedHasher:
    """Embeds every image as the same feature, and counts the views asked for."""

    def __init__(self, feature: np.ndarray) -> None:
        self.feature = feature
        self.views: list[int] = []

    async def hash(
        self, canvases: np.ndarray, views: list[int], timeout_s: float, wait: bool = False, windows: bool = False
    ) -> list[Descriptor]:
        self.views.extend(views)
        each_window = np.tile(self.feature, (contract.WINDOW_COUNT, 1)) if windows else None
        return [Descriptor(self.feature, 0.0, windows=each_window) for _ in canvases]


class ExactIndex:
    """Every record of the store, ranked exactly: the VectorIndex contract with no engine behind it."""

    failure = None

    def __init__(self, store: Store) -> None:
        self.store = store

    def nearest(self, feature: np.ndarray, k: int, collections=None):
        with self.store.read() as view:
            records = [r for r in view.records() if collections is None or r.collection in collections]
        scored = [(r, float(np.linalg.norm(feature - r.feature.astype(np.float32)))) for r in records]
        return sorted(scored, key=lambda pair: pair[1])[:k]

    def identical(self, sha256: bytes, collections=None):
        with self.store.read() as view:
            return [r for r in view.by_digest(sha256) if collections is None or r.collection in collections]

    def apply_changes(self) -> None:
        pass

    def stats(self) -> IndexStats:
        return IndexStats(3, 0, 0)


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


DEFAULT_POLICY = Policy()


def checker(store: Store, hasher: FixedHasher, policy: Policy = DEFAULT_POLICY) -> Checker:
    preprocessor = Preprocessor(246, Limits(min_side=32), None, keypoints=False)
    background = Background(np.zeros((0, 512), np.float32), 5)
    judge = Judge(store, policy)
    return build_checker(hasher, store, ExactIndex(store), preprocessor, background, policy, MODEL, 1, judge)


def enrol(store: Store, key: str, feature: np.ndarray, image: bytes) -> None:
    store.enroll(MODEL, [Enrolment(key, hashlib.sha256(image).digest(), feature, 0.3, {})])


def test_byte_identical_images_are_answered_without_triton(store):
    hasher = FixedHasher(unit(1))
    enrol(store, "a", unit(2), PICTURE)
    enrol(store, "b", unit(3), PICTURE)
    result = asyncio.run(checker(store, hasher).check(PICTURE, top_k=5, timeout_s=lambda: 10.0))
    assert hasher.views == [] and result.identical and result.is_duplicate
    assert sorted(m.record.key for m in result.matches) == ["a", "b"] and all(m.is_duplicate for m in result.matches)


def test_a_clear_nearest_is_a_duplicate_and_a_close_other_picture_is_not(store):
    query = unit(1)
    near = query + 0.2 * unit(7)
    enrol(store, "near", near / np.linalg.norm(near), b"near")
    enrol(store, "far", unit(8), b"far")
    no_twins = Policy("margin", margin_threshold=0.2, margin_beta=1.0, twin_similarity=2.0)
    hasher = FixedHasher(query)
    result = asyncio.run(checker(store, hasher, no_twins).check(PICTURE, top_k=1, timeout_s=lambda: 10.0))
    assert hasher.views == [1]  # the check's view count
    assert result.is_duplicate and not result.identical and [m.record.key for m in result.matches] == ["near"]
    assert result.index_generation == 3 and result.matches[0].inliers == -1
    other = query + 0.21 * unit(9)
    enrol(store, "other", other / np.linalg.norm(other), b"other")  # as close as the nearest
    assert not asyncio.run(
        checker(store, hasher, no_twins).check(PICTURE, top_k=1, timeout_s=lambda: 10.0)
    ).is_duplicate


def test_the_same_picture_under_two_keys_is_not_its_own_look_alike(store):
    query = unit(1)
    near = query + 0.2 * unit(7)
    enrol(store, "near", near / np.linalg.norm(near), b"near")
    enrol(store, "near again", near / np.linalg.norm(near), b"near, re-encoded")
    enrol(store, "far", unit(8), b"far")
    policy = Policy("margin", margin_threshold=0.2, margin_beta=1.0, twin_similarity=0.95)
    result = asyncio.run(checker(store, FixedHasher(query), policy).check(PICTURE, top_k=3, timeout_s=lambda: 10.0))
    assert result.is_duplicate
    pairs = [(m.record.key, m.is_duplicate) for m in result.matches]
    assert sorted(pairs[:2]) == [("near", True), ("near again", True)] and pairs[2] == ("far", False)
    assert result.matches[1].nearest_similarity == pytest.approx(1.0, abs=1e-3)
    assert result.matches[2].nearest_similarity < 0.5
    with_twins_as_others = Policy("margin", margin_threshold=0.2, margin_beta=1.0, twin_similarity=2.0)
    assert not asyncio.run(
        checker(store, FixedHasher(query), with_twins_as_others).check(PICTURE, top_k=3, timeout_s=lambda: 10.0)
    ).is_duplicate


def test_nothing_enrolled_is_never_a_duplicate(store):
    result = asyncio.run(checker(store, FixedHasher(unit(1))).check(PICTURE, top_k=3, timeout_s=lambda: 10.0))
    assert not result.is_duplicate and result.matches == []
