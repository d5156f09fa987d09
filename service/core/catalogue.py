"""The enrolled catalogue as a whole: deleting a key, the service's statistics, reloading the
index and finding duplicate groups (the RPCs Delete, Stats, ReloadIndex and FindDuplicates,
without their protobuf)."""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.core.collections import Collections, CollectionStats, name_problem, require_name
from service.core.dismissing import Dismissing
from service.core.enrollment import shown
from service.core.errors import KeyNotFound, RequestError
from service.core.grouping import Group, Progress, find_groups, judged_as_query
from service.core.judging import Judge
from service.storage.store import Store
from service.storage.vector_index import IndexBackend, IndexStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueStats:
    records: int
    index: IndexStats
    runtimes: dict[str, int]  # enrolments by the runtime that made their features
    bytes_on_disk: int  # the store's files and the index's (in the data directory)
    collections: list[CollectionStats]


@dataclass(frozen=True)
class Reloaded:
    reloaded: bool  # a new snapshot was swapped in
    generation: int  # the one in use now


class Catalogue:
    def __init__(
        self,
        store: Store,
        index: IndexBackend,
        collections: Collections,
        dismissing: Dismissing,
        judge: Judge,
        duplicates_cpu_share: float,
    ) -> None:
        self.store = store
        self.index = index
        self.collections = collections
        self.dismissing = dismissing
        self.judge = judge
        self.duplicates_cpu_share = duplicates_cpu_share

    def delete(self, key: str, collection: str) -> int:
        """Removes a key's record and the dismissals against it; returns the record's id."""
        require_name(key, collection)
        removed = self.store.delete(key, collection)
        where = f" in collection {collection!r}" if collection else ""
        if removed is None:
            raise KeyNotFound(f"no image is enrolled under key {shown(key)}{where}")
        forgotten = self.dismissing.forget(collection, key)
        log.info("deleted %s%s (id %d; %d dismissals against it)", shown(key), where, removed.id, forgotten)
        return removed.id

    def stats(self) -> CatalogueStats:
        with self.store.read() as view:
            records = view.count()
        return CatalogueStats(
            records=records,
            index=self.index.stats(),
            runtimes=self.store.runtimes(),
            bytes_on_disk=self.store.bytes_on_disk() + self.index.bytes_on_disk(),
            collections=self.collections.stats(),
        )

    def reload_index(self) -> Reloaded:
        """Loads the newest index snapshot now; raises SnapshotError when it cannot (or the
        backend has none)."""
        reloaded = self.index.reload()
        return Reloaded(reloaded, self.index.stats().generation)

    def groups(self, collection: str | None) -> AsyncIterator[Progress | Group]:
        """FindDuplicates: progress, then the groups of `collection` (None: every collection)."""
        if problem := name_problem(collection or ""):
            raise RequestError(problem)
        judged = judged_as_query(self.judge)
        return find_groups(self.store, self.index, judged, collection, self.duplicates_cpu_share)
