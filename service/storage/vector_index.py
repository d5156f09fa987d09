"""The vector-index interface: what the service needs from a nearest-neighbour engine, and the
engine's whole life cycle (IndexBackend), so nothing outside its own module knows which it is.

The store is the truth; an index is a search structure over its records that follows the
store's change log (the store calls the backend's `on_commit` after every commit). snapshots.py
holds the usearch backend (usearch_index.py's index with its snapshot files), milvus_index.py the
Milvus one (a collection several front services share); backends.py registers them by name.
"""

import argparse
import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from service.storage.manifest import Manifest
from service.storage.records import Record
from service.storage.store import Store

if TYPE_CHECKING:
    from service.config import Settings


class IndexUnavailable(RuntimeError):
    """The engine cannot be opened or reached now; the message says which and why."""


class RebuildError(RuntimeError):
    """A rebuild cannot run now (another is running, nothing to index, the engine unreachable)."""


@dataclass(frozen=True)
class IndexStats:
    generation: int  # the snapshot in use (0: none)
    snapshot_size: int  # records in the snapshot
    unindexed: int  # records enrolled since the snapshot, searched from the live part
    removed: int = 0  # snapshot records deleted or replaced since, filtered out of its answers


class VectorIndex(Protocol):
    """What a Check, FindDuplicates and health ask of the index."""

    failure: str | None  # why it cannot answer now (its engine unreachable); None while it can

    def nearest(
        self, feature: np.ndarray, k: int, collections: frozenset[str] | None = None
    ) -> list[tuple[Record, float]]:
        """The k nearest records in `collections` (None: all), nearest first, with their
        Euclidean distances to `feature`."""
        ...

    def apply_changes(self) -> None:
        """Brings the index up to the store's last commit."""
        ...

    def identical(self, sha256: bytes, collections: frozenset[str] | None = None) -> list[Record]:
        """Records of images with exactly these bytes, in `collections` (None: all)."""
        ...

    def stats(self) -> IndexStats: ...


class IndexBackend(VectorIndex, Protocol):
    """A vector engine's whole life cycle: opened by the composition root from the settings,
    told of every commit, reloaded on request, watched by a background task while the service
    runs, and rebuilt from the store by the ops command (`neardup index rebuild --backend NAME`,
    tools/rebuild_index.py). backends.py registers each implementation under its name."""

    rebuild_help: ClassVar[str]  # what `index rebuild --backend NAME` does, for --help

    @classmethod
    def open(cls, settings: "Settings", store: Store) -> "IndexBackend":
        """The index over `store` as `settings` configure it, ready to serve (its newest snapshot
        loaded, its engine reached). Raises IndexUnavailable or OSError when it cannot serve."""
        ...

    def on_commit(self) -> None:
        """Called after every commit of the store (Store.subscribe): the index follows it; a
        change it cannot take now is taken by `watch`."""
        ...

    def reload(self) -> bool:
        """Loads the newest snapshot now (ReloadIndex): True if one was swapped in. Raises
        SnapshotError when it cannot, or when the backend has no snapshots (the message says why)."""
        ...

    async def watch(self, poll_s: float, wake: asyncio.Event) -> None:
        """The background task for as long as the service runs (loads new snapshots, pushes what
        a failed push left); `wake` is set on SIGHUP."""
        ...

    @property
    def manifest(self) -> Manifest | None:
        """The snapshot in use (None: none yet, or a backend without snapshots)."""
        ...

    def bytes_on_disk(self) -> int:
        """Bytes of the index's files in the data directory (0 for an engine that keeps none here)."""
        ...

    @classmethod
    def add_rebuild_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Its own options of `neardup index rebuild` (named after the backend where only it reads them)."""
        ...

    @classmethod
    def rebuild(cls, arguments: argparse.Namespace) -> str:
        """Builds the index from the store in `arguments.data_dir` (safe while a service serves);
        returns the line the command prints. Raises RebuildError when it cannot."""
        ...
