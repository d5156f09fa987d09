"""Duplicate groups in the catalogue: which enrolled keys are near-duplicates of each other.

Every record of the store is a query: its nearest records (the index's own k-NN, the record
itself left out) are decided by the service's decision (each collection's rule, the "not a
duplicate" memory), and each pair decided a duplicate joins the two keys; the groups are the
connected sets (union-find). Records are taken in batches in a worker thread, with pauses that
keep the work to a share of one core, so Checks keep their CPU meanwhile.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.judging import Judge
from service.core.searches import Search
from service.core.stages.search import NEIGHBOURS
from service.storage.records import Record
from service.storage.store import Store
from service.storage.vector_index import VectorIndex

BATCH = 64
Name = tuple[str, str]  # (collection, key)


@dataclass
class Group:
    names: list[Name]
    pairs: list[tuple[int, int, float]]  # the pairs that joined it: positions in names, and score


@dataclass
class Progress:
    checked: int
    total: int


@dataclass
class Joins:
    """Union-find over keys, keeping the best score of each pair."""

    parent: dict[Name, Name] = field(default_factory=dict)
    pairs: dict[tuple[Name, Name], float] = field(default_factory=dict)

    def root(self, name: Name) -> Name:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def join(self, a: Name, b: Name, score: float) -> None:
        pair = (min(a, b), max(a, b))
        self.pairs[pair] = max(score, self.pairs.get(pair, float("-inf")))
        self.parent[self.root(a)] = self.root(b)

    def groups(self) -> list[Group]:
        members: dict[Name, list[Name]] = {}
        for name in self.parent:
            members.setdefault(self.root(name), []).append(name)
        pairs: dict[Name, list[tuple[Name, Name, float]]] = {}
        for (a, b), score in sorted(self.pairs.items()):
            pairs.setdefault(self.root(a), []).append((a, b, score))
        found = []
        for root, names in members.items():
            if len(names) > 1:
                at = {name: position for position, name in enumerate(sorted(names))}
                found.append(Group(sorted(names), [(at[a], at[b], score) for a, b, score in pairs.get(root, [])]))
        return sorted(found, key=lambda group: (-len(group.names), group.names))


def judged_as_query(judge: Judge) -> Callable[[Record, list[tuple[Record, float]]], Search]:
    """An enrolled record judged as a query against its neighbours, verified with its own stored
    reference for a picture."""

    def judged(record: Record, others: list[tuple[Record, float]]) -> Search:
        return judge.judge(record.feature.astype(np.float32), others, 0.0, judge.as_query(record))

    return judged


def record_ids(store: Store, collection: str | None = None) -> np.ndarray:
    """The ids FindDuplicates queries, in id order: every record's, or one collection's."""
    with store.read() as view:
        if collection is None:
            return np.fromiter(view.record_ids(), np.uint64)
        named = dict(view.collection_ids())
        if collection:
            return np.array(sorted(id_ for id_, name in named.items() if name == collection), np.uint64)
        return np.array([id_ for id_ in view.record_ids() if id_ not in named], np.uint64)


async def find_groups(
    store: Store,
    index: VectorIndex,
    judge: Callable[[Record, list[tuple[Record, float]]], Search],
    collection: str | None,
    cpu_share: float,
) -> AsyncIterator[Progress | Group]:
    """Progress after every batch, then the groups, largest first. Only records of `collection`
    are queried and joined (None: every collection)."""
    ids = await asyncio.to_thread(record_ids, store, collection)
    joins = Joins()
    wanted = frozenset([collection]) if collection is not None else None

    def query(batch: np.ndarray) -> None:
        with store.read() as view:
            records = [r for r in map(view.by_id, map(int, batch)) if r and (wanted is None or r.collection in wanted)]
        for record in records:
            name = (record.collection, record.key)
            nearest = index.nearest(record.feature.astype(np.float32), NEIGHBOURS + 1, wanted)
            others = [(r, d) for r, d in nearest if (r.collection, r.key) != name][:NEIGHBOURS]
            search = judge(record, others)
            for (other, _), duplicate, score in zip(others, search.decision.each, search.scores, strict=True):
                if duplicate:
                    joins.join(name, (other.collection, other.key), score)

    for start in range(0, len(ids), BATCH):
        started = time.perf_counter()
        await asyncio.to_thread(query, ids[start : start + BATCH])
        yield Progress(min(start + BATCH, len(ids)), len(ids))
        busy = time.perf_counter() - started
        await asyncio.sleep(busy * (1 / cpu_share - 1))  # at most cpu_share of one core, over time
    for group in joins.groups():
        yield group
