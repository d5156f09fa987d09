"""The usearch vector index: a snapshot built by service/storage/snapshots.py, plus live changes.

The snapshot covers the store up to a change sequence number (its manifest says which). What
came after lives in memory: a small exact usearch index of records enrolled since, and the ids
deleted (or replaced) since, which are filtered out of the snapshot's answers. So a Check sees
an enrolment or a deletion at once, and a rebuild only makes search cheaper. With no snapshot
the live part starts from every record in the store (the change log may have been pruned).
"""

import threading
from collections.abc import Callable

import numpy as np
from usearch.index import Index

from service.storage.collections import CollectionMap, records_in
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
# A search over at most this many records (the whole snapshot, or the collections a search is
# limited to) computes every distance: a fraction of a millisecond, and no neighbour the graph
# fails to reach (two benchmark runs lost a picture enrolled under two keys that way).
EXACT_RECORDS = 5_000


def new_index(dtype: str, dimensions: int = DIMENSIONS) -> Index:
    return Index(
        ndim=dimensions,
        metric=METRIC,
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


def exact_index(dimensions: int) -> Index:
    """An index only ever searched by every distance (the live part): its graph is never walked, so
    it is built as cheaply as usearch allows (65,538 records added one at a time in 1.4 s instead of 180)."""
    return Index(ndim=dimensions, metric=METRIC, dtype="f16", connectivity=2, expansion_add=2)


class LiveChanges:
    """What the store holds beyond a snapshot: records enrolled since (searched exactly) and
    snapshot ids deleted or replaced since (filtered out). Enrolments also tell `collections`
    where each new id belongs."""

    def __init__(self, seq: int, collections: CollectionMap, dimensions: int) -> None:
        self.added = exact_index(dimensions)
        self.removed: set[int] = set()
        self.seq = seq  # the last change applied
        self.collections = collections

    @classmethod
    def everything(cls, view: ReadView, collections: CollectionMap, dimensions: int) -> "LiveChanges":
        """Every record of the store, for an index with no snapshot."""
        live = cls(view.seq(), collections, dimensions)
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
                if record.collection:
                    self.collections.set(record.id, record.collection)


def search_where(
    index: Index, query: np.ndarray, k: int, keep: Callable[[int], bool], first: int, exact: bool = False
) -> list[int]:
    """The k nearest ids of `index` that `keep` admits.

    Asks for `first` and doubles the count while ids it rejects crowd out the answer, so
    thousands of deletions since the snapshot (or a filter) cost a search of about k + the
    rejected ids that are really near, not k + every rejected id."""
    count = first
    while True:
        count = min(count, len(index))
        keys = [int(key) for key in index.search(query, count, exact=exact).keys]
        kept = [key for key in keys if keep(key)]
        if len(kept) >= k or count == len(index):
            return kept[:k]
        count *= 2


def search_without(snapshot: Index, query: np.ndarray, k: int, removed: set[int]) -> list[int]:
    """The k nearest ids in the snapshot that are not in `removed` (by every distance when it holds
    at most EXACT_RECORDS)."""
    first, exact = k + min(len(removed), k), len(snapshot) <= EXACT_RECORDS
    return search_where(snapshot, query, k, lambda key: key not in removed, first, exact)


class UsearchIndex:
    """The snapshot and the live changes since, searched as one (a VectorIndex). Thread-safe.

    A snapshot of at most EXACT_RECORDS is searched by every distance, and so is a search limited
    to collections that hold at most that many (a small collection in a large index would
    otherwise need the graph to walk past most of it); larger ones search the graph, asking for
    more while other collections' ids crowd the answer (tests/test_usearch_index.py; recall and
    latency in docs/performance.md)."""

    failure = None  # it lives in this process: it can always answer

    def __init__(self, store: Store, dimensions: int = DIMENSIONS) -> None:
        self.store = store
        self.dimensions = dimensions  # the model's embedding width
        self._lock = threading.Lock()
        self.snapshot: Index | None = None
        self.generation = 0  # the snapshot's; 0 while there is none
        self.live: LiveChanges | None = None  # set by the first apply_changes() or snapshot swap
        self.collections: CollectionMap | None = None  # read from the store with the first live changes

    def stats(self) -> IndexStats:
        snapshot_size = len(self.snapshot) if self.snapshot is not None else 0
        live = self.live
        return IndexStats(
            self.generation, snapshot_size, len(live.added) if live else 0, len(live.removed) if live else 0
        )

    def _collection_map(self, view: ReadView) -> CollectionMap:
        if self.collections is None:
            self.collections = CollectionMap()
            for id_, collection in view.collection_ids():
                self.collections.set(id_, collection)
        return self.collections

    def apply_changes(self) -> None:
        with self._lock, self.store.read() as view:
            if self.live is None:
                self.live = LiveChanges.everything(view, self._collection_map(view), self.dimensions)
            self.live.catch_up(view)

    def swap(self, snapshot: Index, generation: int, snapshot_seq: int) -> None:
        """Makes a freshly loaded snapshot current, keeping every change it does not cover
        (those after `snapshot_seq`, the last store change it holds).

        The new live changes are replayed from the store's log, most of them before taking the
        lock and the rest under it, so no request waits for the replay and an enrolment
        committed meanwhile is not lost.
        """
        with self.store.read() as view:
            live = LiveChanges(snapshot_seq, self._collection_map(view), self.dimensions)
            live.catch_up(view)
        with self._lock, self.store.read() as view:
            live.catch_up(view)
            self.snapshot, self.generation, self.live = snapshot, generation, live

    def candidates(self, feature: np.ndarray, k: int, collections: frozenset[str] | None = None) -> set[int]:
        """Ids of the k nearest records in the snapshot (less those deleted since) and of the k
        nearest enrolled since, in `collections` (None: all). The two sets' distances are not
        comparable (the snapshot's vectors may be quantised), so `nearest` ranks them."""
        query = np.asarray(feature, dtype=np.float32)
        found: set[int] = set()
        with self._lock:
            snapshot, live = self.snapshot, self.live
            removed = live.removed if live else set()
            added = live.added if live is not None and len(live.added) else None
            if collections is not None:
                wanted = self.collections.wanted(collections) if self.collections else np.zeros(0, np.uint32)
                held, total = records_in(self.store, collections)
                if held <= EXACT_RECORDS:
                    return self._exact(query, k, self.collections.ids_in(wanted) if len(wanted) else [], removed)
                # Ask the graph for as many as hold k of these collections' records on average, and a half more.
                first = int(1.5 * k * total / held)
                holds = self.collections.holds
                if snapshot is not None and len(snapshot):
                    keep = lambda key: key not in removed and holds(key, wanted)  # noqa: E731
                    found.update(search_where(snapshot, query, k, keep, first))
                if added is not None:
                    found.update(search_where(added, query, k, lambda key: holds(key, wanted), first, exact=True))
                return found
            if snapshot is not None and len(snapshot):
                found.update(search_without(snapshot, query, k, removed))
            if added is not None:
                found.update(int(key) for key in added.search(query, min(k, len(added)), exact=True).keys)
        return found

    def _exact(self, query: np.ndarray, k: int, ids, removed: set[int]) -> set[int]:
        """The k nearest of these ids by exact distance to the vectors the index holds."""
        keys, vectors = [], []
        for part in (self.snapshot, self.live.added if self.live else None):
            if part is None or not len(ids):
                continue
            present = [int(i) for i in np.asarray(ids)[part.contains(np.asarray(ids))] if int(i) not in removed]
            if present:
                keys += present
                vectors.append(np.stack(part.get(np.array(present), dtype=np.float32)))
        if not keys:
            return set()
        distances = ((np.concatenate(vectors) - query) ** 2).sum(axis=1)
        return {keys[i] for i in np.argsort(distances)[:k]}

    def identical(self, sha256: bytes, collections: frozenset[str] | None = None) -> list[Record]:
        with self.store.read() as view:
            return [r for r in view.by_digest(sha256) if collections is None or r.collection in collections]

    def nearest(
        self, feature: np.ndarray, k: int, collections: frozenset[str] | None = None
    ) -> list[tuple[Record, float]]:
        """The k nearest records (in `collections`; None: all) with their exact Euclidean
        distances to `feature`, recomputed from the features in the store for a few more
        candidates than asked for."""
        query = np.asarray(feature, dtype=np.float32)
        ids = self.candidates(query, k + EXTRA_CANDIDATES, collections)
        with self.store.read() as view:
            records = [record for record in map(view.by_id, ids) if record is not None]
        scored = [(record, float(np.linalg.norm(query - record.feature.astype(np.float32)))) for record in records]
        return sorted(scored, key=lambda pair: pair[1])[:k]
