"""A read transaction of the store: every method sees the same snapshot of it."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import lmdb
import numpy as np

from service.storage.records import FEATURE_DTYPE, Change, Record, from_u64, split_name, stored_name, u64

if TYPE_CHECKING:
    from service.storage.store import Store


class ReadView:
    """A read transaction: every method sees the same snapshot of the store.

    Made by `Store.read()`, which opens the transaction (under its map lock) and ends it; the
    view only reads through it."""

    def __init__(self, store: "Store", txn: lmdb.Transaction):
        self.store = store
        self.txn = txn

    def model(self) -> str | None:
        stored = self.txn.get(b"model", db=self.store.meta)
        return stored.decode() if stored else None

    def seq(self) -> int:
        return from_u64(self.txn.get(b"seq", u64(0), db=self.store.meta))

    def count(self) -> int:
        return self.txn.stat(self.store.records)["entries"]

    def by_id(self, id_: int) -> Record | None:
        data = self.txn.get(u64(id_), db=self.store.records)
        return Record.decode(data) if data else None

    def keypoints(self, id_: int) -> bytes:
        return self.txn.get(u64(id_), b"", db=self.store.keypoints)

    def reference(self, id_: int) -> bytes:
        return self.txn.get(u64(id_), b"", db=self.store.references)

    def reference_points(self, id_: int) -> bytes:
        """The keypoints stored beside the reference (b"": enrolled before they were, or none)."""
        if self.store.reference_points is None:
            return b""
        return self.txn.get(u64(id_), b"", db=self.store.reference_points)

    def small_view(self, id_: int) -> np.ndarray | None:
        data = self.txn.get(u64(id_), db=self.store.small_views) if self.store.small_views is not None else None
        return np.frombuffer(data, FEATURE_DTYPE) if data else None

    def small_views(self) -> Iterator[tuple[int, np.ndarray]]:
        """(id, small view feature) of every record enrolled with one."""
        for id_, data in self.txn.cursor(db=self.store.small_views) if self.store.small_views is not None else ():
            yield from_u64(id_), np.frombuffer(data, FEATURE_DTYPE)

    def by_key(self, key: str, collection: str = "") -> Record | None:
        id_ = self.txn.get(stored_name(collection, key), db=self.store.keys)
        return self.by_id(from_u64(id_)) if id_ else None

    def by_digest(self, sha256: bytes) -> list[Record]:
        cursor = self.txn.cursor(db=self.store.digests)
        if not cursor.set_key(sha256):
            return []
        return [record for id_ in cursor.iternext_dup() if (record := self.by_id(from_u64(id_)))]

    def record_ids(self) -> Iterator[int]:
        """The id of every record, in id order."""
        for id_ in self.txn.cursor(db=self.store.records).iternext(values=False):
            yield from_u64(id_)

    def records(self) -> Iterator[Record]:
        for _, data in self.txn.cursor(db=self.store.records):
            yield Record.decode(data)

    def changes_after(self, seq: int) -> Iterator[Change]:
        cursor = self.txn.cursor(db=self.store.changes)
        if cursor.set_range(u64(seq + 1)):
            for key, value in cursor:
                yield Change(from_u64(key), value[:1], from_u64(value[1:9]), *split_name(value[9:]))

    def collection_ids(self) -> Iterator[tuple[int, str]]:
        """(id, collection) of every record outside the default collection."""
        for id_, collection in self.txn.cursor(db=self.store.collection_of):
            yield from_u64(id_), bytes(collection).decode()

    def meta_under(self, prefix: bytes) -> dict[str, bytes]:
        """The meta entries whose names start with `prefix`, by the rest of their names."""
        cursor = self.txn.cursor(db=self.store.meta)
        found, more = {}, cursor.set_range(prefix)
        while more and cursor.key().startswith(prefix):
            found[bytes(cursor.key()[len(prefix) :]).decode()] = bytes(cursor.value())
            more = cursor.next()
        return found

    def meta(self, name: bytes) -> bytes | None:
        return self.txn.get(name, db=self.store.meta)
