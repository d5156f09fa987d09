"""`neardup backup` while the store is written hard (about 30 MB a second) and the index is rebuilt: the
copy is whole (every page of every LMDB database read back, every record decoded) and its index
covers nothing its store lacks."""

import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
from usearch.index import Index

from service.storage import backup as backup_module
from service.storage.manifest import Manifest
from service.storage.records import Enrolment
from service.storage.store import Store

MODEL = "sscd@224"
REBUILD = [sys.executable, "-m", "service.cli", "index", "rebuild", "--quiet", "--data-dir"]
BATCH = 5  # what the writer commits at once, every WRITE_PAUSE_S
WRITE_PAUSE_S = 0.01
INITIAL = 2_000  # with their references about 130 MB: copying them lets many commits land meanwhile
REFERENCE_BYTES = 64 * 1024


def enrolments(first: int, rng: np.random.Generator, count: int = BATCH) -> list[Enrolment]:
    features = rng.normal(size=(count, 512)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return [
        Enrolment(
            key=f"hard/{first + i}",
            sha256=(first + i).to_bytes(32, "big"),
            feature=feature,
            threshold=0.5,
            metadata={"n": str(first + i)},
            reference=rng.bytes(REFERENCE_BYTES),
            small_view=feature,
        )
        for i, feature in enumerate(features)
    ]


def walk_every_entry(path) -> dict[bytes, int]:
    """Opens an LMDB environment read-only and reads every key and value of every database: each
    page a cursor reaches is read and checked by LMDB (a torn copy fails here)."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=64, subdir=True)
    try:
        counts = {}
        with env.begin() as txn:
            names = [key for key, _ in txn.cursor()]  # the main database lists the named ones
            counts[b""] = len(names)
            for name in names:
                database = env.open_db(name, txn=txn, create=False)
                counts[name] = sum(len(key) + len(value) > 0 for key, value in txn.cursor(database))
        return counts
    finally:
        env.close()


def write_hard(data_dir: str, first: int) -> None:
    """Enrols a batch every WRITE_PAUSE_S (about 30 MB a second), until killed (a writer process:
    LMDB allows one open environment per process, and the backup runs in the test's)."""
    store, rng = Store(Path(data_dir)), np.random.default_rng(first)
    while True:
        store.enroll(MODEL, enrolments(first, rng))
        first += BATCH
        time.sleep(WRITE_PAUSE_S)


def test_a_backup_under_hard_writes_and_a_rebuild_is_whole_and_consistent(tmp_path, monkeypatch):
    """Rebuilds forced at the worst moments: just before the index is copied and just after (a
    backup that copied the store first would then copy an index of records its store lacks)."""
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    rng = np.random.default_rng(0)
    for first in range(0, INITIAL, 200):
        store.enroll(MODEL, enrolments(first, rng, 200))
    store.close()
    subprocess.run([*REBUILD, str(data_dir)], check=True, timeout=300)
    code = f"from tests.test_backup import write_hard; write_hard({str(data_dir)!r}, {INITIAL})"
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    copy_index = backup_module.copy_index

    def rebuilt_around(*args):
        subprocess.run([*REBUILD, str(data_dir)], check=True, timeout=300)
        copied = copy_index(*args)
        subprocess.run([*REBUILD, str(data_dir)], check=True, timeout=300)
        return copied

    monkeypatch.setattr(backup_module, "copy_index", rebuilt_around)
    try:
        before = Store(data_dir, readonly=True)
        deadline = time.monotonic() + 60
        while before.count() < INITIAL + 10 * BATCH and time.monotonic() < deadline:  # writing by now
            time.sleep(0.05)
        count_before = before.count()
        before.close()
        done = backup_module.backup(data_dir, tmp_path / "copy")
    finally:
        writer.kill()
        writer.wait(30)
    assert INITIAL < count_before <= done.records and done.index_generation > 1  # written and rebuilt meanwhile

    counts = walk_every_entry(tmp_path / "copy" / "store.lmdb")
    copy = Store(tmp_path / "copy", readonly=True)
    try:
        with copy.read() as view:
            records = list(view.records())
            seq = view.seq()
        assert len(records) == copy.count() == done.records
        assert all(record.feature.shape == (512,) and record.key.startswith("hard/") for record in records)
        assert max(counts.values()) >= len(records)  # the records' database read to its end
        path = Manifest.path(tmp_path / "copy" / "index")
        manifest = Manifest.parse(path.read_bytes(), path)
        assert manifest.snapshot_seq <= seq  # the copied index covers no change its store lacks
        snapshot = Index.restore(str(tmp_path / "copy" / "index" / manifest.file))
        assert {int(key) for key in snapshot.keys} <= {record.id for record in records}
    finally:
        copy.close()
