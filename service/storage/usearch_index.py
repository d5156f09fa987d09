"""The usearch vector index: a snapshot built by service/storage/snapshots.py, plus live changes.

The snapshot covers the store up to a change sequence number (its manifest says which). What
came after lives in memory: a small exact usearch index of records enrolled since, and the ids
deleted (or replaced) since, which are filtered out of the snapshot's answers. So a Check sees
an enrolment or a deletion at once, and a rebuild only makes search cheaper. With no snapshot
the live part starts from every record in the store (the change log may have been pruned).
"""

import threading

import numpy as np
from usearch.index import Index

from service.storage.read_view import ReadView
from service.storage.records import DELETE, Record
from service.storage.store import Store
from service.storage.vector_index import IndexStats
from service.triton.contract import DIMENSIONS

METRIC = "l2sq"  # squared Euclidean over unit vectors; distances are reported as Euclidean
# HNSW parameters, measured by benchmarks/bench.py and benchmarks/hnsw_frontier.py
# (docs/performance.md). At 1M, connectivity 48 finds more for the same distances computed than
# 32 (recall@1 0.986 against 0.975 at ~6,100 per query), for builds 9-18 % slower.
CONNECTIVITY = 48
EXPANSION_ADD = 64
EXPANSION_SEARCH = 128
# Snapshot vector storage: i8 is 1.6x smaller and 2x faster to search than f16 at the same
# recall (docs/performance.md); the distances a Check reports are recomputed from the store.
SNAPSHOT_DTYPE = "i8"
# A Check ranks this many more neighbours than it needs by their exact distances.
EXTRA_CANDIDATES = 8


def new_index(dtype: str) -> Index:
    return Index(
        ndim=DIMENSIONS,
        metric=METRIC,
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


class LiveChanges:
    """What the store holds beyond a snapshot: records enrolled since (searched exactly) and
    snapshot ids deleted or replaced since (filtered out)."""

    def __init__(self, seq: int) -> None:
        self.added = new_index("f16")
        self.removed: set[int] = set()
        self.seq = seq  # the last change applied

    @classmethod
    def everything(cls, view: ReadView) -> "LiveChanges":
        """Every record of the store, for an index with no snapshot."""
        live = cls(seq=view.seq())
        for record in view.records():
            live.added.add(record.id, record.feature.astype(np.float32))
        return live

    def catch_up(self, view: ReadView) -> None:
        """Applies the store's changes after the last one applied, in commit order."""
        for change in view.changes_after(self.seq):
            self.seq = change.seq
            if change.op == DELETE:
                if change.id in self.added:
                    self.added.remove(change.id)
                else:
                    self.removed.add(change.id)
                continue
            record = view.by_id(change.id)
            if record is not None:  # else a later change in this log deletes it again
                self.added.add(change.id, record.feature.astype(np.float32))


def search_without(snapshot: Index, query: np.ndarray, k: int, removed: set[int]) -> list[int]:
    """The k nearest ids in the snapshot that are not in `removed`.

    Asks for a few more than k and doubles the count while removed ids crowd out the answer,
    so thousands of deletions since the snapshot cost a search of about k + the removed ids
    that are really near, not k + every removed id."""
    count = k + min(len(removed), k)
    while True:
        count = min(count, len(snapshot))
        keys = [int(key) for key in snapshot.search(query, count).keys]
        kept = [key for key in keys if key not in removed]
        if len(kept) >= k or count == len(snapshot):
            return kept[:k]
        count *= 2


class UsearchIndex:
    """The snapshot and the live changes since, searched as one (a VectorIndex). Thread-safe."""

    failure = None  # it lives in this process: it can always answer

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.snapshot: Index | None = None
        self.generation = 0  # the snapshot's; 0 while there is none
        self.live: LiveChanges | None = None  # set by the first apply_changes() or snapshot swap

    def stats(self) -> IndexStats:
        snapshot_size = len(self.snapshot) if self.snapshot is not None else 0
        live = self.live
        return IndexStats(
            self.generation, snapshot_size, len(live.added) if live else 0, len(live.removed) if live else 0
        )

    def apply_changes(self) -> None:
        with self._lock, self.store.read() as view:
            if self.live is None:
                self.live = LiveChanges.everything(view)
            self.live.catch_up(view)

    def swap(self, snapshot: Index, generation: int, snapshot_seq: int) -> None:
        """Makes a freshly loaded snapshot current, keeping every change it does not cover
        (those after `snapshot_seq`, the last store change it holds).

        The new live changes are replayed from the store's log, most of them before taking the
        lock and the rest under it, so no request waits for the replay and an enrolment
        committed meanwhile is not lost.
        """
        live = LiveChanges(seq=snapshot_seq)
        with self.store.read() as view:
            live.catch_up(view)
        with self._lock, self.store.read() as view:
            live.catch_up(view)
            self.snapshot, self.generation, self.live = snapshot, generation, live

    def candidates(self, feature: np.ndarray, k: int) -> set[int]:
        """Ids of the k nearest records in the snapshot (less those deleted since) and of the k
        nearest enrolled since. The two sets' distances are not comparable (the snapshot's
        vectors may be quantised), so `nearest` ranks them."""
        query = np.asarray(feature, dtype=np.float32)
        found: set[int] = set()
        with self._lock:
            snapshot, live = self.snapshot, self.live
            if snapshot is not None and len(snapshot):
                found.update(search_without(snapshot, query, k, live.removed if live else set()))
            if live is not None and len(live.added):
                found.update(int(key) for key in live.added.search(query, min(k, len(live.added)), exact=True).keys)
        return found

    def identical(self, sha256: bytes) -> list[Record]:
        with self.store.read() as view:
            return view.by_digest(sha256)

    def nearest(self, feature: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """The k nearest records with their exact Euclidean distances to `feature`, recomputed
        from the features in the store for a few more candidates than asked for."""
        query = np.asarray(feature, dtype=np.float32)
        ids = self.candidates(query, k + EXTRA_CANDIDATES)
        with self.store.read() as view:
            records = [record for record in map(view.by_id, ids) if record is not None]
        scored = [(record, float(np.linalg.norm(query - record.feature.astype(np.float32)))) for record in records]
        return sorted(scored, key=lambda pair: pair[1])[:k]
