"""The LMDB store, on a real LMDB environment."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from service.storage.records import DELETE, ENROLL, Enrolment, ModelMismatch, Record
from service.storage.store import Store

MODEL = "sscd@224"


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def item(key: str, content: str, metadata: dict | None = None) -> Enrolment:
    digest = hashlib.sha256(content.encode()).digest()
    return Enrolment(key, digest, unit(int.from_bytes(digest[:8])), 0.25, metadata or {})


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


def test_a_record_survives_encoding_with_its_fields():
    record = Record("s3://bucket/ü.jpg", unit(1), 0.5, b"\x01" * 32, MODEL, 1700000000.5, {"a": "β"}, 7, 9)
    decoded = Record.decode(record.encode())
    assert (decoded.key, decoded.threshold, decoded.sha256, decoded.model) == (record.key, 0.5, b"\x01" * 32, MODEL)
    assert (decoded.enrolled_at, decoded.metadata, decoded.id, decoded.seq) == (1700000000.5, {"a": "β"}, 7, 9)
    assert np.allclose(decoded.feature, record.feature, atol=1e-3)  # stored as float16


def test_enrolled_updated_unchanged_and_deleted(store):
    first = store.enroll(MODEL, [item("a", "one", {"k": "v"}), item("b", "two")])
    assert [w.status for w in first] == ["ENROLLED", "ENROLLED"]
    again = store.enroll(MODEL, [item("a", "one"), item("b", "three")])
    assert [w.status for w in again] == ["UNCHANGED", "UPDATED"]
    assert again[1].replaced_id == first[1].record.id and again[1].record.id != first[1].record.id
    with store.read() as view:
        assert view.count() == 2
        assert view.by_key("a").metadata == {"k": "v"}
        assert view.by_key("b").sha256 == hashlib.sha256(b"three").digest()
        assert view.by_digest(hashlib.sha256(b"two").digest()) == []
    assert store.delete("a").key == "a"
    assert store.delete("a") is None
    with store.read() as view:
        assert view.count() == 1 and view.by_key("a") is None


def test_a_records_reference_and_its_points_go_with_it(store):
    def with_reference(key: str, content: str) -> Enrolment:
        return replace(item(key, content), reference=b"jpeg " + content.encode(), reference_points=b"points")

    [first] = store.enroll(MODEL, [with_reference("a", "one")])
    [updated] = store.enroll(MODEL, [with_reference("a", "two")])
    with store.read() as view:
        assert (view.reference(first.record.id), view.reference_points(first.record.id)) == (b"", b"")
        assert (view.reference(updated.record.id), view.reference_points(updated.record.id)) == (b"jpeg two", b"points")
    store.delete("a")
    with store.read() as view:
        assert (view.reference(updated.record.id), view.reference_points(updated.record.id)) == (b"", b"")


def test_the_change_log_records_every_enrolment_and_removal_in_order(store):
    [a] = store.enroll(MODEL, [item("a", "one")])
    [b] = store.enroll(MODEL, [item("a", "other")])
    store.delete("a")
    with store.read() as view:
        changes = [(c.op, c.id) for c in view.changes_after(0)]
        assert changes == [(ENROLL, a.record.id), (DELETE, a.record.id), (ENROLL, b.record.id), (DELETE, b.record.id)]
        assert [c.seq for c in view.changes_after(2)] == [3, 4]
        assert view.seq() == 4


def test_one_key_twice_in_a_batch(store):
    written = store.enroll(MODEL, [item("a", "one"), item("a", "one"), item("a", "two")])
    assert [w.status for w in written] == ["ENROLLED", "UNCHANGED", "UPDATED"]


def test_features_of_another_model_are_refused(store):
    store.enroll(MODEL, [item("a", "one")])
    with pytest.raises(ModelMismatch, match="holds features of model 'sscd@224'.*runs 'sscd_distilled@224'"):
        store.enroll("sscd_distilled@224", [item("b", "two")])
    with pytest.raises(ModelMismatch):
        store.check_model("sscd_distilled@224")


def test_the_map_grows_instead_of_filling_up(tmp_path):
    store = Store(tmp_path, map_size=64 * 1024)
    for batch in range(20):
        store.enroll(MODEL, [item(f"k{batch}-{i}", f"{batch}-{i}") for i in range(50)])
    with store.read() as view:
        assert view.count() == 1000
    assert store.env.info()["map_size"] > 64 * 1024
    store.close()


def test_records_persist_across_reopening(tmp_path):
    store = Store(tmp_path)
    store.enroll(MODEL, [item("a", "one")])
    store.close()
    reopened = Store(tmp_path, readonly=True)
    with reopened.read() as view:
        assert view.by_key("a").model == MODEL and view.model() == MODEL
    reopened.close()


def test_a_store_written_before_small_views_and_reference_points_opens_read_only_without_them(tmp_path):
    """A rebuild may open a store read-only before any service of this version has opened it to write."""
    writable = Store(tmp_path)
    writable.enroll(MODEL, [item("a", "one")])
    with writable.env.begin(write=True) as txn:
        txn.drop(writable.small_views, delete=True)  # as a store of an earlier version is
        txn.drop(writable.reference_points, delete=True)
    writable.close()
    older = Store(tmp_path, readonly=True)
    try:
        assert older.small_views is None and older.reference_points is None
        with older.read() as view:
            assert view.count() == 1 and view.small_view(1) is None and list(view.small_views()) == []
            assert view.reference_points(1) == b""
    finally:
        older.close()
