"""The vector-index interface: what the service needs from a nearest-neighbour engine.

The store is the truth; an index is a search structure over its records that follows the
store's change log (the store calls `apply_changes` after every commit). usearch_index.py is
one implementation, milvus_index.py (a collection several front services share) the other.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.storage.records import Record


@dataclass(frozen=True)
class IndexStats:
    generation: int  # the snapshot in use (0: none)
    snapshot_size: int  # records in the snapshot
    unindexed: int  # records enrolled since the snapshot, searched from the live part
    removed: int = 0  # snapshot records deleted or replaced since, filtered out of its answers


class VectorIndex(Protocol):
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
