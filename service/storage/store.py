"""The LMDB store: one record per enrolled image, and a change log for the live index.

Databases in one environment (`DATA_DIR/store.lmdb`):
  records  id (u64 BE) -> Record         the enrolled images
  keys     key (utf-8) -> id             the caller's keys, unique
  digests  sha256      -> id  (dupsort)  byte-identical lookups
  changes  seq (u64 BE) -> op + id       every enrolment and deletion, in commit order
  keypoints id (u64 BE) -> packed ORB    for the geometric check, when enabled at enrolment
  references id (u64 BE) -> JPEG         what verification compares a query with, when it is on
  reference_points id (u64 BE) -> packed its keypoints, made at enrolment (media/verification.py)
  small_views id (u64 BE) -> float16s    the feature of the picture shrunk to a thumbnail (storage/small_views.py)
  collection_of id (u64 BE) -> name      the collection of each record outside the default one
  meta     name -> value                 model identity, next id, last seq, collection counts and settings

A key is unique within its collection: `keys` holds it under records.stored_name (the key itself
in the default collection "").

Each batch of writes is one transaction, committed with fsync: once `write` returns, every
record in it survives a crash, and a crash mid-batch leaves none of it (no torn records).
`changes` lets the index (a snapshot built at some seq) catch up with what came after; every
commit calls the store's subscribers (the index), so no writer has to remember to.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb

from service.storage.read_view import ReadView
from service.storage.records import (
    DELETE,
    ENROLL,
    FEATURE_DTYPE,
    Enrolment,
    ModelMismatch,
    Record,
    StoreError,
    StoreUnwritable,
    Written,
    from_u64,
    stored_name,
    u64,
)
from service.storage.rwlock import ReadWriteLock

# What an LMDB error on opening or reading the store means for whoever runs a command on it.
STORE_DAMAGED = (
    "the store in {path} cannot be read ({error}): it is damaged. Restore the data directory from a backup, "
    "or see docs/operations.md ('A damaged store') for checking it and copying out what can still be read"
)
MIN_MAP_SIZE = 1 << 30
PROBE_BYTES = 1 << 20
RUNTIME_PREFIX = b"runtime:"  # meta keys: enrolments per runtime
COUNT_PREFIX = b"count:"  # meta keys: records per collection (not the default one)


class Store:
    """The one LMDB environment of a data directory. Thread-safe; writes are serialised by LMDB."""

    def __init__(self, data_dir: Path, readonly: bool = False, map_size: int = MIN_MAP_SIZE):
        self.path = Path(data_dir) / "store.lmdb"
        if readonly and not self.path.exists():
            raise StoreError(f"no store at {self.path}: enrol images first, or check --data-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        existing = (self.path / "data.mdb").stat().st_size if (self.path / "data.mdb").exists() else 0
        self.env = lmdb.open(
            str(self.path),
            map_size=max(map_size, 2 * existing),
            max_dbs=16,
            readonly=readonly,
            subdir=True,
            max_readers=1024,
        )
        self._refuse_if_cut_short()
        self.records = self.env.open_db(b"records", create=not readonly)
        self.keys = self.env.open_db(b"keys", create=not readonly)
        self.digests = self.env.open_db(b"digests", dupsort=True, create=not readonly)
        self.changes = self.env.open_db(b"changes", create=not readonly)
        self.meta = self.env.open_db(b"meta", create=not readonly)
        self.keypoints = self.env.open_db(b"keypoints", create=not readonly)
        self.collection_of = self.env.open_db(b"collection_of", create=not readonly)
        self.references = self.env.open_db(b"references", create=not readonly)
        # A store written before small views (or reference points) has none, and one opened read-only cannot make it.
        self.small_views = self._optional_db(b"small_views", readonly)
        self.reference_points = self._optional_db(b"reference_points", readonly)
        self._lock = ReadWriteLock()  # held for writing only while the map grows
        self._subscribers: list[Callable[[], None]] = []
        self.write_failure: str | None = None  # why the last write failed, until one succeeds

    def _refuse_if_cut_short(self) -> None:
        """A data.mdb shorter than the pages its meta page says are in use (a copy cut short, a full
        disk during a restore) would fault the process (SIGBUS) at the first read past its end."""
        size = (self.path / "data.mdb").stat().st_size
        reaches = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        if reaches > size:
            self.env.close()
            raise lmdb.CorruptedError(f"{self.path / 'data.mdb'} is {size} bytes, its pages reach {reaches}: cut short")

    def _optional_db(self, name: bytes, readonly: bool):
        try:
            return self.env.open_db(name, create=not readonly)
        except lmdb.NotFoundError:
            return None

    def subscribe(self, on_commit: Callable[[], None]) -> None:
        """Calls on_commit() after every write transaction commits (in the writer's thread)."""
        self._subscribers.append(on_commit)

    def close(self) -> None:
        self.env.close()

    # Reads -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadView]:
        """A consistent read-only view; use as a context manager. Held under the map lock's read
        side, so the map is never grown under an open transaction."""
        self._lock.acquire_read()
        try:
            txn = self.env.begin(buffers=False)
            try:
                yield ReadView(self, txn)
            finally:
                txn.abort()
        finally:
            self._lock.release_read()

    def model(self) -> str | None:
        with self.read() as view:
            return view.model()

    def count(self) -> int:
        with self.read() as view:
            return view.count()

    def feature_width(self) -> int | None:
        """The width of the stored features (one model made them all), or None while none is stored."""
        with self.read() as view:
            first = next(iter(view.records()), None)
            return None if first is None else len(first.feature)

    def map_use(self) -> float:
        """The share of the LMDB map in use; write() grows the map when it is full."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"] / info["map_size"]

    def runtimes(self) -> dict[str, int]:
        """Enrolments by the runtime that made their features (int8 CPU kernels and a GPU differ slightly)."""
        with self.read() as view:
            return {name: from_u64(value) for name, value in view.meta_under(RUNTIME_PREFIX).items()}

    def write(self, work, notify: bool = True):
        """Runs work(txn) in one durable write transaction, growing the map if it is full, then
        tells the subscribers (if `notify`). A write the disk refuses (full, failing) raises
        StoreUnwritable and keeps nothing of the transaction."""
        while True:
            self._lock.acquire_read()
            try:
                with self.env.begin(write=True) as txn:
                    result = work(txn)
                break
            except lmdb.MapFullError:
                pass
            except (lmdb.DiskError, lmdb.PanicError, lmdb.MapResizedError) as error:
                self._refused(error)
            except lmdb.Error as error:
                if type(error) is not lmdb.Error:  # a subclass names a fault of ours, not of the disk
                    raise
                self._refused(error)
            finally:
                self._lock.release_read()
            self._grow()
        self.write_failure = None
        for on_commit in self._subscribers if notify else ():
            on_commit()
        return result

    def _refused(self, error: lmdb.Error):
        self.write_failure = f"the store in {self.path} cannot write: {error}"
        raise StoreUnwritable(f"{self.write_failure}; is its disk full? Nothing of this write was kept")

    def probe_write(self) -> None:
        """A write reaching PROBE_BYTES past the end of the data file, to learn whether the store
        can write again after a failure: one that fit in the file's unused pages (a failed write
        leaves as many as it got written before the disk filled) would say nothing about the disk.
        Then removed, so that its pages are free for records."""
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        unused = max(0, (self.path / "data.mdb").stat().st_size - used)
        self.write(lambda txn: txn.put(b"write_probe", bytes(unused + PROBE_BYTES), db=self.meta), notify=False)
        self.write(lambda txn: txn.delete(b"write_probe", db=self.meta), notify=False)

    def set_meta(self, name: bytes, value: bytes, overwrite: bool = True) -> None:
        """Bookkeeping of the index's (its writer id, how far it has pushed the log): no records
        change, so the subscribers are not told."""
        self.write(lambda txn: txn.put(name, value, overwrite=overwrite, db=self.meta), notify=False)

    def _grow(self) -> None:
        self._lock.acquire_write()
        try:
            self.env.set_mapsize(self.env.info()["map_size"] * 2)
        finally:
            self._lock.release_write()

    def enroll(self, model: str, batch: list[Enrolment]) -> list[Written]:
        """Writes a batch in one transaction; returns what became of each item, in order.

        A key already enrolled with the same bytes is UNCHANGED; with other bytes it is UPDATED:
        the old record is removed and the new one gets a new id, so an index snapshot that still
        holds the old id can tell it is gone.
        """

        def work(txn: lmdb.Transaction) -> list[Written]:
            self._check_model(txn, model, claim=True)
            seq = from_u64(txn.get(b"seq", u64(0), db=self.meta))
            next_id = from_u64(txn.get(b"next_id", u64(1), db=self.meta))
            now = time.time()
            written = []
            for item in batch:
                name = stored_name(item.collection, item.key)
                old_id = txn.get(name, db=self.keys)
                old = Record.decode(txn.get(old_id, db=self.records)) if old_id else None
                if old is not None and old.sha256 == item.sha256:
                    written.append(Written("UNCHANGED", old))
                    continue
                if old is not None:
                    seq += 1
                    self._remove(txn, old, seq)
                seq += 1
                record = Record(
                    item.key,
                    item.feature,
                    item.threshold,
                    item.sha256,
                    model,
                    now,
                    item.metadata,
                    next_id,
                    seq,
                    item.collection,
                )
                next_id += 1
                txn.put(u64(record.id), record.encode(), db=self.records)
                txn.put(name, u64(record.id), db=self.keys)
                if record.collection:
                    txn.put(u64(record.id), record.collection.encode(), db=self.collection_of)
                self._count(txn, record.collection, +1)
                txn.put(item.sha256, u64(record.id), db=self.digests)
                txn.put(u64(seq), ENROLL + u64(record.id), db=self.changes)
                small_view = item.small_view.astype(FEATURE_DTYPE).tobytes() if item.small_view is not None else b""
                for db, extra in (
                    (self.keypoints, item.keypoints),
                    (self.references, item.reference),
                    (self.reference_points, item.reference_points),
                    (self.small_views, small_view),
                ):
                    if extra:
                        txn.put(u64(record.id), extra, db=db)
                if item.runtime:
                    made_by = RUNTIME_PREFIX + item.runtime.encode()
                    txn.put(made_by, u64(from_u64(txn.get(made_by, u64(0), db=self.meta)) + 1), db=self.meta)
                written.append(Written("UPDATED" if old else "ENROLLED", record, old.id if old else None))
            txn.put(b"seq", u64(seq), db=self.meta)
            txn.put(b"next_id", u64(next_id), db=self.meta)
            return written

        return self.write(work)

    def delete(self, key: str, collection: str = "") -> Record | None:
        """Removes the record of a key in a collection; None if there was none."""

        def work(txn: lmdb.Transaction) -> Record | None:
            id_ = txn.get(stored_name(collection, key), db=self.keys)
            if id_ is None:
                return None
            record = Record.decode(txn.get(id_, db=self.records))
            seq = from_u64(txn.get(b"seq", u64(0), db=self.meta)) + 1
            self._remove(txn, record, seq)
            txn.put(b"seq", u64(seq), db=self.meta)
            return record

        return self.write(work)

    def _remove(self, txn: lmdb.Transaction, record: Record, seq: int) -> None:
        name = stored_name(record.collection, record.key)
        txn.delete(u64(record.id), db=self.records)
        txn.delete(name, db=self.keys)
        txn.delete(record.sha256, u64(record.id), db=self.digests)
        txn.delete(u64(record.id), db=self.keypoints)
        txn.delete(u64(record.id), db=self.references)
        txn.delete(u64(record.id), db=self.reference_points)
        txn.delete(u64(record.id), db=self.small_views)
        txn.delete(u64(record.id), db=self.collection_of)
        self._count(txn, record.collection, -1)
        txn.put(u64(seq), DELETE + u64(record.id) + name, db=self.changes)

    def _count(self, txn: lmdb.Transaction, collection: str, change: int) -> None:
        if collection:  # the default collection's count is what the others leave of the total
            name = COUNT_PREFIX + collection.encode()
            txn.put(name, u64(from_u64(txn.get(name, u64(0), db=self.meta)) + change), db=self.meta)

    def _check_model(self, txn: lmdb.Transaction, model: str, claim: bool) -> None:
        stored = txn.get(b"model", db=self.meta)
        if stored is None and claim:
            txn.put(b"model", model.encode(), db=self.meta)
        elif stored is not None and stored.decode() != model:
            raise ModelMismatch(
                f"the store in {self.path.parent} holds features of model {stored.decode()!r}, but the service "
                f"runs {model!r}: serve with the store's model, or use another --data-dir"
            )

    def check_model(self, model: str) -> None:
        with self.env.begin() as txn:
            self._check_model(txn, model, claim=False)

    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
