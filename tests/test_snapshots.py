"""Index snapshots: built from the store, swapped in with the changes after them, damaged ones
refused, old generations removed."""

import json

import pytest

from service.storage import change_log
from service.storage.snapshots import Manifest, RebuildError, SnapshotError, SnapshotLoader, build_snapshot
from service.storage.store import Store
from tests.test_store import MODEL, item
from tests.test_usearch_index import enroll, following, nearest_key


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


def test_a_snapshot_swap_keeps_changes_made_after_it(store, tmp_path):
    index = following(store)
    loader = SnapshotLoader(index, tmp_path / "index")
    enroll(store, *[f"k{i}" for i in range(50)])
    manifest = build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    assert (manifest.generation, manifest.count, manifest.model) == (1, 50, MODEL)
    # Changes after the snapshot was taken, before the service loads it:
    enroll(store, "late")
    store.delete("k7")
    store.enroll(MODEL, [item("k8", "k8 replaced")])
    assert loader.load_if_new()
    stats = index.stats()
    assert stats.generation == 1 and stats.snapshot_size == 50
    assert stats.unindexed == 2  # "late" and the new k8
    assert nearest_key(store, index, "late") == "late"
    assert nearest_key(store, index, "k8") == "k8"
    with store.read() as view:
        removed_ids = {1 + 7, 1 + 8}
        for key in ("k3", "k40"):
            assert not removed_ids & index.candidates(view.by_key(key).feature, 60)
    assert not loader.load_if_new()  # the same manifest again: nothing to do


@pytest.mark.parametrize("damage", ["missing file", "corrupt file", "corrupt manifest", "other model", "wrong count"])
def test_an_unusable_snapshot_is_refused_and_the_current_one_kept(store, tmp_path, damage):
    index = following(store)
    loader = SnapshotLoader(index, tmp_path / "index")
    enroll(store, *[f"k{i}" for i in range(20)])
    build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    loader.load_if_new()
    enroll(store, "after")
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
    with pytest.raises(SnapshotError, match="neardup index rebuild"):
        loader.load_if_new()
    assert index.stats().generation == 1
    assert nearest_key(store, index, "after") == "after" and nearest_key(store, index, "k5") == "k5"
    assert not loader.load_if_new()  # not retried until something changes or a reload is forced


def generations_on_disk(index_dir) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in index_dir.glob("index-*.usearch"))


def test_keep_removes_all_but_the_newest_generations_and_never_the_current_one(store, tmp_path):
    index_dir = tmp_path / "index"
    enroll(store, "a", "b")
    for _ in range(4):
        build_snapshot(store, index_dir, "f16", keep=3, progress=False)
    assert generations_on_disk(index_dir) == [2, 3, 4]
    manifest = build_snapshot(store, index_dir, "f16", keep=1, progress=False)
    assert generations_on_disk(index_dir) == [5] and manifest.file == "index-5.usearch"
    with pytest.raises(ValueError, match="at least 1"):
        build_snapshot(store, index_dir, "f16", keep=0, progress=False)
    assert generations_on_disk(index_dir) == [5]


def test_an_empty_store_is_not_indexed(store, tmp_path):
    with pytest.raises(RebuildError, match="enrol images first"):
        build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)


@pytest.mark.parametrize(
    "change",
    [
        {"generation": "two"},
        {"count": 2.5},
        {"created_at": "yesterday"},
        {"sha256": None},
        {"file": "../store.lmdb/data.mdb"},
        {"file": "index-9.usearch"},
    ],
    ids=["generation a string", "count a float", "created_at a string", "no checksum", "file outside", "other file"],
)
def test_a_manifest_with_wrong_types_or_another_file_is_refused(store, tmp_path, change):
    enroll(store, "a")
    build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    path = Manifest.path(tmp_path / "index")
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(SnapshotError, match="is corrupt"):
        SnapshotLoader(following(store), tmp_path / "index").load_if_new()


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_an_index_file_that_does_not_match_its_checksum_never_reaches_usearch(store, tmp_path, damage):
    index = following(store)
    loader = SnapshotLoader(index, tmp_path / "index")
    enroll(store, *[f"k{i}" for i in range(30)])
    build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    loader.load_if_new()
    second = build_snapshot(store, tmp_path / "index", "f16", keep=2, progress=False)
    path = tmp_path / "index" / second.file
    data = bytearray(path.read_bytes())
    if damage == "flipped bytes":  # the same size, a few bytes changed deep inside the graph
        for at in range(len(data) // 2, len(data) // 2 + 40, 4):
            data[at] ^= 0xFF
    else:
        del data[len(data) * 3 // 4 :]
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="does not match the checksum"):
        loader.load_if_new()
    assert index.stats().generation == 1 and nearest_key(store, index, "k3") == "k3"


def test_the_log_keeps_one_generation_and_a_snapshot_older_than_it_is_refused(store, tmp_path):
    loader = SnapshotLoader(following(store), tmp_path / "index")
    manifests = []
    for key in "abc":
        enroll(store, key)
        manifests.append(build_snapshot(store, tmp_path / "index", "f16", keep=5, progress=False))
        manifests[-1] = (manifests[-1], Manifest.path(tmp_path / "index").read_text())
        assert loader.load_if_new()
    # Loading generation 3 pruned the changes generation 2 covers, not those after it: a worker
    # still on generation 2 can catch up.
    assert change_log.pruned_to(store) == manifests[1][0].snapshot_seq
    with store.read() as view:
        assert [change.seq for change in view.changes_after(0)] == [manifests[2][0].snapshot_seq]
    Manifest.path(tmp_path / "index").write_text(manifests[0][1])  # an operator restores an old index
    with pytest.raises(SnapshotError, match="older than the store's change log"):
        SnapshotLoader(following(store), tmp_path / "index").load_if_new()
