"""The search index: a usearch snapshot from tools/rebuild_index.py plus live changes from LMDB."""

import json

import numpy as np
import pytest

from service.index import IndexError_, Manifest, SearchIndex, SnapshotLoader
from service.store import Store
from tests.test_store import MODEL, item, unit
from tools.rebuild_index import build_snapshot


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


def enroll(store: Store, index: SearchIndex, *keys: str) -> None:
    store.enroll(MODEL, [item(key, key) for key in keys])
    index.catch_up()


def nearest_key(store: Store, index: SearchIndex, key: str) -> str | None:
    with store.read() as view:
        feature = view.by_key(key).feature
    found = index.nearest(feature, 1)
    return found[0][0].key if found else None


def test_live_enrolments_and_deletions_are_searched_without_a_snapshot(store):
    index = SearchIndex(store)
    enroll(store, index, "a", "b", "c")
    assert nearest_key(store, index, "b") == "b"
    with store.read() as view:
        feature_b = view.by_key("b").feature
    store.delete("b")
    index.catch_up()
    assert all(record.id != 2 for record, _ in index.nearest(feature_b, 3))
    assert index.unindexed == 2 and index.generation == 0


def test_a_snapshot_swap_keeps_changes_made_after_it(store, tmp_path):
    index = SearchIndex(store)
    loader = SnapshotLoader(index, tmp_path / "index")
    enroll(store, index, *[f"k{i}" for i in range(50)])
    manifest = build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    assert (manifest.generation, manifest.count, manifest.model) == (1, 50, MODEL)
    # Changes after the snapshot was taken, before the service loads it:
    enroll(store, index, "late")
    store.delete("k7")
    store.enroll(MODEL, [item("k8", "k8 replaced")])
    index.catch_up()
    assert loader.load_if_new()
    assert index.generation == 1 and index.snapshot_size == 50
    assert index.unindexed == 2  # "late" and the new k8
    assert nearest_key(store, index, "late") == "late"
    assert nearest_key(store, index, "k8") == "k8"
    with store.read() as view:
        removed_ids = {1 + 7, 1 + 8}
        for key in ("k3", "k40"):
            assert not removed_ids & index.candidates(view.by_key(key).feature, 60)
    assert not loader.load_if_new()  # the same manifest again: nothing to do


def test_distances_are_euclidean_between_unit_vectors(store):
    index = SearchIndex(store)
    enroll(store, index, "a")
    with store.read() as view:
        stored = view.by_key("a").feature.astype("float32")
    query = unit(999)
    [(_, distance)] = index.nearest(query, 1)
    assert distance == pytest.approx(float(((stored - query) ** 2).sum() ** 0.5), abs=1e-6)


def test_nearest_ranks_an_i8_snapshot_and_live_records_by_exact_distances_from_the_store(store, tmp_path):
    index = SearchIndex(store)
    enroll(store, index, *[f"k{i}" for i in range(200)])
    build_snapshot(store, tmp_path / "index", "i8", keep=2, progress=False)
    assert SnapshotLoader(index, tmp_path / "index").load_if_new()
    enroll(store, index, *[f"live{i}" for i in range(20)])  # searched exactly, in other units
    assert index.unindexed == 20
    with store.read() as view:
        target = view.by_key("k17").feature.astype(np.float32)
        stored = {record.id: record.feature.astype(np.float32) for record in view.records()}
    query = target + 0.02 * unit(5)
    query /= np.linalg.norm(query)
    nearest = index.nearest(query, 5)
    assert nearest[0][0].key == "k17"
    exact = sorted(float(np.linalg.norm(query - feature)) for feature in stored.values())[:5]
    assert [distance for _, distance in nearest] == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize("damage", ["missing file", "corrupt file", "corrupt manifest", "other model", "wrong count"])
def test_an_unusable_snapshot_is_refused_and_the_current_one_kept(store, tmp_path, damage):
    index = SearchIndex(store)
    loader = SnapshotLoader(index, tmp_path / "index")
    enroll(store, index, *[f"k{i}" for i in range(20)])
    build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    loader.load_if_new()
    enroll(store, index, "after")
    second = build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    index_dir = tmp_path / "index"
    path = index_dir / second.file
    manifest = json.loads(Manifest.path(index_dir).read_text())
    if damage == "missing file":
        path.unlink()
    elif damage == "corrupt file":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "corrupt manifest":
        Manifest.path(index_dir).write_text("{not json")
    else:
        manifest.update({"model": "pdq"} if damage == "other model" else {"count": 3})
        Manifest.path(index_dir).write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="rebuild_index"):
        loader.load_if_new()
    assert index.generation == 1
    assert nearest_key(store, index, "after") == "after" and nearest_key(store, index, "k5") == "k5"
    assert not loader.load_if_new()  # not retried until something changes or a reload is forced
