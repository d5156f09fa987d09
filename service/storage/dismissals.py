"""The "not a duplicate" memory: pictures a caller said are not duplicates of an enrolled key.

Each entry holds the picture's feature and the enrolled image it was dismissed against (collection,
key and that image's SHA-256). A Check whose query is close to an entry's picture (a re-encoded or
edited copy of it) no longer reports that key as a duplicate while the key still holds that
image; Delete removes the key's entries, and a key re-enrolled with other bytes leaves them inert
(listing drops them). Entries live in the store's LMDB environment, so they survive restarts
and index rebuilds (which never touch them), and are kept by `neardup backup`:

  dismissals        id (u64 BE) -> JSON header line + float16 feature
  dismissals_by_key stored name (records.stored_name) -> id   (dupsort)
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.storage.records import FEATURE_DTYPE, from_u64, stored_name, u64
from service.storage.store import Store

NEXT_ID = b"next_dismissal_id"


@dataclass(frozen=True)
class Dismissal:
    id: int
    collection: str
    key: str
    sha256: bytes  # of the enrolled image it was dismissed against
    created_at: float
    feature: np.ndarray  # the dismissed picture's

    def encode(self) -> bytes:
        header = {"collection": self.collection, "key": self.key, "sha256": self.sha256.hex(), "at": self.created_at}
        return json.dumps(header).encode() + b"\n" + np.asarray(self.feature, FEATURE_DTYPE).tobytes()

    @classmethod
    def decode(cls, id_: int, data: bytes) -> "Dismissal":
        header, _, feature = bytes(data).partition(b"\n")
        fields = json.loads(header)
        return cls(
            id_,
            fields["collection"],
            fields["key"],
            bytes.fromhex(fields["sha256"]),
            fields["at"],
            np.frombuffer(feature, FEATURE_DTYPE),
        )


class Dismissals:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.entries = store.env.open_db(b"dismissals", create=True)
        self.by_key = store.env.open_db(b"dismissals_by_key", dupsort=True, create=True)

    def add(self, feature: np.ndarray, collection: str, key: str, sha256: bytes) -> Dismissal:
        def work(txn) -> Dismissal:
            id_ = from_u64(txn.get(NEXT_ID, u64(1), db=self.store.meta))
            entry = Dismissal(id_, collection, key, sha256, time.time(), np.asarray(feature, FEATURE_DTYPE))
            txn.put(u64(id_), entry.encode(), db=self.entries)
            txn.put(stored_name(collection, key), u64(id_), db=self.by_key)
            txn.put(NEXT_ID, u64(id_ + 1), db=self.store.meta)
            return entry

        return self.store.write(work, notify=False)

    def of_key(self, collection: str, key: str) -> list[Dismissal]:
        with self.store.read() as view:
            txn = view.txn
            cursor = txn.cursor(db=self.by_key)
            if not cursor.set_key(stored_name(collection, key)):
                return []
            ids = [from_u64(value) for value in cursor.iternext_dup()]
            return [Dismissal.decode(id_, txn.get(u64(id_), db=self.entries)) for id_ in ids]

    def every(self) -> list[Dismissal]:
        with self.store.read() as view:
            return [Dismissal.decode(from_u64(id_), data) for id_, data in view.txn.cursor(db=self.entries)]

    def remove(self, id_: int, reachable: Callable[[str], bool] | None = None) -> Dismissal | None:
        """Removes entry `id_` and returns it; None if there is none (or `reachable` refuses its collection)."""

        def work(txn) -> Dismissal | None:
            data = txn.get(u64(id_), db=self.entries)
            if data is None:
                return None
            entry = Dismissal.decode(id_, data)
            if reachable is not None and not reachable(entry.collection):
                return None
            txn.delete(u64(id_), db=self.entries)
            txn.delete(stored_name(entry.collection, entry.key), u64(id_), db=self.by_key)
            return entry

        return self.store.write(work, notify=False)

    def forget(self, collection: str, key: str) -> int:
        """Removes every entry against a key (it was deleted); returns how many."""
        removed = [self.remove(entry.id) for entry in self.of_key(collection, key)]
        return len(removed)
