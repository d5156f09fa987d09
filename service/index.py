"""Nearest-neighbour search: a usearch snapshot built by tools/rebuild_index.py, plus live changes.

The snapshot covers the store up to a change sequence number (its manifest says which). What
came after lives in memory: a small exact usearch index of records enrolled since, and the ids
deleted (or replaced) since, which are filtered out of the snapshot's answers. So a Check sees
an enrolment or a deletion at once, and a rebuild only makes search cheaper.

Files in DATA_DIR/index/: `manifest.json` (the current snapshot) and the `index-<generation>.usearch`
files it names. The manifest is replaced by rename, so a reader sees the old or the new one.
"""

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from usearch.index import Index

from service.store import DELETE, ReadView, Record, Store

log = logging.getLogger(__name__)

DIMENSIONS = 512
METRIC = "l2sq"  # squared Euclidean over unit vectors; distances are reported as Euclidean
MANIFEST = "manifest.json"
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


class IndexError_(RuntimeError):
    """The snapshot on disk cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    generation: int
    count: int
    model: str
    snapshot_seq: int  # the store's change sequence number the snapshot includes
    dtype: str
    file: str
    created_at: float
    build_seconds: float = 0.0

    @staticmethod
    def path(index_dir: Path) -> Path:
        return index_dir / MANIFEST

    @classmethod
    def parse(cls, raw: bytes, path: Path) -> "Manifest":
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as error:
            raise IndexError_(f"{path} is corrupt ({error}); run tools/rebuild_index.py") from None

    def write(self, index_dir: Path) -> None:
        write_atomically(self.path(index_dir), json.dumps(asdict(self), indent=1).encode())


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def new_index(dtype: str) -> Index:
    return Index(
        ndim=DIMENSIONS,
        metric=METRIC,
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


def load_snapshot(index_dir: Path, manifest: Manifest, model: str | None) -> Index:
    """Memory-maps the snapshot a manifest names, after checking it belongs to this store."""
    if model is not None and manifest.model != model:
        raise IndexError_(
            f"index generation {manifest.generation} was built for model {manifest.model!r}, "
            f"the store holds {model!r}: run tools/rebuild_index.py"
        )
    path = index_dir / manifest.file
    if not path.exists():
        raise IndexError_(f"{path} named by {MANIFEST} is missing: run tools/rebuild_index.py")
    try:
        snapshot = Index.restore(str(path), view=True)
    except Exception as error:  # usearch raises plain RuntimeError/ValueError for damaged files
        raise IndexError_(f"{path} cannot be loaded ({error}): run tools/rebuild_index.py") from None
    if snapshot is None or len(snapshot) != manifest.count or snapshot.ndim != DIMENSIONS:
        found = "nothing" if snapshot is None else f"{len(snapshot)} vectors of {snapshot.ndim} dimensions"
        raise IndexError_(
            f"{path} holds {found}, its manifest says {manifest.count}: the file is damaged; run tools/rebuild_index.py"
        )
    snapshot.expansion_search = EXPANSION_SEARCH  # a search setting: not stored in the file
    return snapshot


class LiveChanges:
    """What the store holds beyond a snapshot: records enrolled since (searched exactly) and
    snapshot ids deleted or replaced since (filtered out)."""

    def __init__(self, seq: int) -> None:
        self.added = new_index("f16")
        self.removed: set[int] = set()
        self.seq = seq  # the last change applied

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


class SearchIndex:
    """The snapshot and the live changes since, searched as one. Thread-safe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.snapshot: Index | None = None
        self.manifest: Manifest | None = None
        self.live = LiveChanges(seq=0)  # empty until catch_up() or a snapshot swap

    @property
    def generation(self) -> int:
        return self.manifest.generation if self.manifest else 0

    @property
    def snapshot_size(self) -> int:
        return len(self.snapshot) if self.snapshot is not None else 0

    @property
    def unindexed(self) -> int:
        """Records the snapshot does not hold (enrolled since it was built)."""
        return len(self.live.added)

    def catch_up(self) -> None:
        """Brings the live changes up to the store's last commit; call after every write."""
        with self._lock, self.store.read() as view:
            self.live.catch_up(view)

    def swap(self, snapshot: Index, manifest: Manifest) -> None:
        """Makes a freshly loaded snapshot current, keeping every change it does not cover.

        The new live changes are replayed from the store's log after the snapshot's seq, most of
        them before taking the lock and the rest under it, so no request waits for the replay and
        an enrolment committed meanwhile is not lost.
        """
        live = LiveChanges(seq=manifest.snapshot_seq)
        with self.store.read() as view:
            live.catch_up(view)
        with self._lock, self.store.read() as view:
            live.catch_up(view)
            self.snapshot, self.manifest, self.live = snapshot, manifest, live

    def candidates(self, feature: np.ndarray, k: int) -> set[int]:
        """Ids of the k nearest records in the snapshot (less those deleted since) and of the k
        nearest enrolled since. The two sets' distances are not comparable (the snapshot's
        vectors may be quantised), so `nearest` ranks them."""
        query = np.asarray(feature, dtype=np.float32)
        found: set[int] = set()
        with self._lock:
            snapshot, live = self.snapshot, self.live
            if snapshot is not None and len(snapshot):
                matches = snapshot.search(query, min(k + len(live.removed), len(snapshot)))
                found.update(int(key) for key in matches.keys if int(key) not in live.removed)
            if len(live.added):
                found.update(int(key) for key in live.added.search(query, min(k, len(live.added)), exact=True).keys)
        return found

    def nearest(self, feature: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """The k nearest records with their exact Euclidean distances to `feature`, recomputed
        from the features in the store for a few more candidates than asked for."""
        query = np.asarray(feature, dtype=np.float32)
        ids = self.candidates(query, k + EXTRA_CANDIDATES)
        with self.store.read() as view:
            records = [record for record in map(view.by_id, ids) if record is not None]
        scored = [(record, float(np.linalg.norm(query - record.feature.astype(np.float32)))) for record in records]
        return sorted(scored, key=lambda pair: pair[1])[:k]


class SnapshotLoader:
    """Loads the snapshot the manifest names when it differs from the one in use.

    Called from a background thread (a poll, SIGHUP or the ReloadIndex RPC): requests keep
    being served from the current snapshot while the new one loads, then it is swapped in.
    A missing, stale or damaged snapshot raises IndexError_ and leaves the current one in use.
    """

    def __init__(self, index: SearchIndex, index_dir: Path):
        self.index = index
        self.index_dir = index_dir
        self._lock = threading.Lock()  # one load at a time
        self.loaded: bytes | None = None  # the manifest in use, as read
        self.refused: bytes | None = None  # the last manifest that failed: not retried unless forced

    def load_if_new(self, force: bool = False) -> bool:
        """True if a new snapshot was swapped in."""
        with self._lock:
            path = Manifest.path(self.index_dir)
            raw = path.read_bytes() if path.exists() else None
            if raw is None or raw == self.loaded or (raw == self.refused and not force):
                return False
            try:
                manifest = Manifest.parse(raw, path)
                snapshot = load_snapshot(self.index_dir, manifest, self.index.store.model())
            except IndexError_:
                self.refused = raw
                raise
            self.index.swap(snapshot, manifest)
            self.loaded = raw
            log.info(
                "index generation %d in use: %d vectors, snapshot at change %d, %d enrolled since",
                manifest.generation,
                manifest.count,
                manifest.snapshot_seq,
                self.index.unindexed,
            )
            return True
