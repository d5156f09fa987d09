"""Small views: each enrolled picture's feature as a thumbnail of it, searched for thumbnails.

A thumbnail's descriptor is far from its original's (the network sees a blurred upscale), but
close to that of the original shrunk to a thumbnail's size too. Enrolment stores that second
feature (the store's `small_views` database, when --small-view-side is on); a query under
--small-query-side that its nearest records do not confirm searches these (core/checking.py).

Every small view is kept in memory and searched by every distance (usearch's exact search over
a float16 matrix: no graph to build at start-up or to persist in snapshots; ~50 ms per 200,000
views on two cores, docs/performance.md). Like the index's live part, it follows the store's
change log, so an enrolment is found at once.
"""

import threading

import numpy as np
from usearch.index import MetricKind, search

from service.storage.change_log import PRUNED_TO
from service.storage.collections import CollectionMap
from service.storage.records import DELETE, FEATURE_DTYPE, from_u64, u64
from service.storage.store import Store
from service.triton.contract import DIMENSIONS

IdDistance = tuple[int, float]  # a record's id and the distance of its small view


class SmallViews:
    """The small views of the store's records (those enrolled with one), by record id. Thread-safe."""

    def __init__(self, store: Store, dimensions: int = DIMENSIONS) -> None:
        self.store = store
        self.dimensions = dimensions
        self._lock = threading.Lock()
        self._reset(-1)

    @classmethod
    def following(cls, store: Store, dimensions: int = DIMENSIONS) -> "SmallViews":
        """Every small view in the store, then those each commit brings."""
        views = cls(store, dimensions)
        views.catch_up()
        store.subscribe(views.catch_up)
        return views

    def _reset(self, seq: int) -> None:
        self.vectors = np.zeros((1024, self.dimensions), FEATURE_DTYPE)
        self.ids = np.zeros(1024, np.uint64)
        self.row_of: dict[int, int] = {}
        self.collections = CollectionMap()
        self.seq = seq  # the last store change applied (-1: none read yet)

    def __len__(self) -> int:
        return len(self.row_of)

    def catch_up(self) -> None:
        """Applies the store's changes since the last call (at the first, reads every small view)."""
        with self._lock, self.store.read() as view:
            if self.seq < from_u64(view.meta(PRUNED_TO) or u64(0)):  # never read, or the log no longer reaches back
                self._reset(view.seq())
                collection_of = dict(view.collection_ids())  # records outside the default collection
                for id_, feature in view.small_views():
                    self._add(id_, feature, collection_of.get(id_, ""))
                return
            for change in view.changes_after(self.seq):
                self.seq = change.seq
                if change.op == DELETE:
                    self._remove(change.id)
                elif (feature := view.small_view(change.id)) is not None and (record := view.by_id(change.id)):
                    self._add(change.id, feature, record.collection)

    def _add(self, id_: int, feature: np.ndarray, collection: str) -> None:
        row = len(self.row_of)
        if row == len(self.ids):
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
            self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
        self.vectors[row], self.ids[row], self.row_of[id_] = feature, id_, row
        self.collections.set(id_, collection)

    def _remove(self, id_: int) -> None:
        """Moves the last row into the removed one's place."""
        row = self.row_of.pop(id_, None)
        if row is None:
            return
        last = len(self.row_of)
        if row != last:
            self.vectors[row], self.ids[row] = self.vectors[last], self.ids[last]
            self.row_of[int(self.ids[row])] = row

    def nearest(self, feature: np.ndarray, k: int, collections: frozenset[str] | None = None) -> list[IdDistance]:
        """The ids of the k records (in `collections`; None: all) whose small views are nearest
        `feature`, nearest first, with the (L2) distance to each."""
        query = np.asarray(feature, FEATURE_DTYPE)
        with self._lock:
            count = len(self.row_of)
            wanted = self.collections.wanted(collections) if collections is not None else None
            asked = k
            while True:
                asked = min(asked, count)
                if not asked:
                    return []
                found = search(self.vectors[:count], query, asked, MetricKind.L2sq, exact=True)
                distances = np.sqrt(np.maximum(found.distances, 0.0))
                pairs = [(int(self.ids[row]), float(d)) for row, d in zip(found.keys, distances, strict=True)]
                kept = pairs if wanted is None else [pair for pair in pairs if self.collections.holds(pair[0], wanted)]
                if len(kept) >= k or asked == count:
                    return kept[:k]
                asked *= 2
