"""Collections: named parts of one catalogue, each with its own decision settings, searched
together or apart through one index.

"" is the default collection; other names are 1-64 letters, digits, '.', '_' or '-' (they go
into Milvus filter expressions unquoted). A record's collection is in the record and, outside the
default one, in the store's `collection_of` database, from which an index learns which of its
ids belong where (CollectionMap). Counts and settings live in the store's meta entries.
"""

import json
import re
from dataclasses import dataclass

import numpy as np

from service.storage.records import from_u64
from service.storage.store import COUNT_PREFIX, Store

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SETTINGS_PREFIX = b"settings:"


def name_problem(name: str) -> str | None:
    if name and not NAME.fullmatch(name):
        return f"collection {name[:70]!r} must be 1-64 letters, digits, '.', '_' or '-' (or empty: the default)"
    return None


@dataclass(frozen=True)
class CollectionSettings:
    """A collection's decision: a rule and its threshold ("": the service's), and whether a mirror
    image is a duplicate ("": as the service says); the service's other parameters stay."""

    rule: str
    threshold: float
    mirror: str = ""


def counts(store: Store) -> dict[str, int]:
    """Records per collection, the default one ("") included."""
    with store.read() as view:
        named = {name: from_u64(value) for name, value in view.meta_under(COUNT_PREFIX).items()}
    named = {name: count for name, count in named.items() if count}
    return {"": store.count() - sum(named.values()), **named}


def records_in(store: Store, collections: frozenset[str]) -> tuple[int, int]:
    """Records in these collections, and in all; only their own counts are read (a search limited to
    one of 10,000 collections used to read all 10,000), every one only when the default collection
    is among them (its count is what the others leave)."""
    if "" in collections:
        every = counts(store)
        return sum(every.get(name, 0) for name in collections), sum(every.values())
    with store.read() as view:
        named = [view.meta(COUNT_PREFIX + name.encode()) for name in collections]
        return sum(from_u64(value) for value in named if value), view.count()


def settings_of(store: Store, name: str) -> CollectionSettings | None:
    """One collection's settings (None: the service's)."""
    with store.read() as view:
        stored = view.meta(SETTINGS_PREFIX + name.encode())
    return CollectionSettings(**json.loads(stored)) if stored else None


def settings(store: Store) -> dict[str, CollectionSettings]:
    with store.read() as view:
        stored = view.meta_under(SETTINGS_PREFIX)
    return {name: CollectionSettings(**json.loads(value)) for name, value in stored.items()}


def set_settings(store: Store, name: str, chosen: CollectionSettings | None) -> None:
    """Persists a collection's settings (None: back to the service's)."""
    key = SETTINGS_PREFIX + name.encode()

    def work(txn) -> None:
        if chosen is None:
            txn.delete(key, db=store.meta)
        else:
            txn.put(key, json.dumps(chosen.__dict__).encode(), db=store.meta)

    store.write(work, notify=False)


class CollectionMap:
    """Which collection each record id is in, for filtering an index's answers: a code per id
    (0: the default collection), grown as ids grow; 32 bits, so collections never share a code."""

    def __init__(self) -> None:
        self.codes = np.zeros(1024, np.uint32)
        self.code_of: dict[str, int] = {"": 0}

    def set(self, id_: int, collection: str) -> None:
        code = self.code_of.setdefault(collection, len(self.code_of))
        if id_ >= len(self.codes):
            self.codes = np.concatenate([self.codes, np.zeros(max(id_ + 1, len(self.codes)), np.uint32)])
        self.codes[id_] = code

    def wanted(self, collections: frozenset[str]) -> np.ndarray:
        """The codes of these collections (those with no record here have none)."""
        return np.array([self.code_of[name] for name in collections if name in self.code_of], np.uint32)

    def ids_in(self, wanted: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.codes, wanted))

    def holds(self, id_: int, wanted: np.ndarray) -> bool:
        return id_ < len(self.codes) and self.codes[id_] in wanted
