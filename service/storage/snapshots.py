"""The life cycle of index snapshots, in one place: build, manifest, load, watch, clean up.

Files in DATA_DIR/index/: `manifest.json` (the current snapshot) and the
`index-<generation>.usearch` files it names. A build reads one consistent snapshot of the store
(a single read transaction), writes the index to a temporary file, fsyncs and renames it, then
replaces the manifest the same way, so a reader sees the old or the new one. The service
notices a new manifest (polled, or at once on SIGHUP or ReloadIndex), loads it in the
background and swaps it in; changes committed meanwhile are replayed from the store's log.

UsearchBackend (at the end) is this life cycle as the service's IndexBackend "usearch":
`neardup index rebuild` and tools/rebuild_index.py reach `rebuild` through it.
"""

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm
from usearch.index import Index

from service.storage import change_log
from service.storage.manifest import FIX, MANIFEST, Manifest, SnapshotError, file_sha256, fsync_directory
from service.storage.records import StoreError
from service.storage.store import Store
from service.storage.usearch_index import EXPANSION_SEARCH, SNAPSHOT_DTYPE, UsearchIndex, new_index
from service.storage.vector_index import RebuildError
from service.triton.contract import DIMENSIONS

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

LOCK = ".rebuild.lock"
BATCH = 10_000  # records added to the index per call while building


def generation_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def bytes_on_disk(index_dir: Path) -> int:
    return sum(p.stat().st_size for p in index_dir.glob("*.usearch")) if index_dir.exists() else 0


# Build ---------------------------------------------------------------------------------------


def rebuild(data_dir: Path, dtype: str = SNAPSHOT_DTYPE, keep: int = 2, progress: bool = True) -> Manifest:
    """Builds the next generation from the store in data_dir (opened read-only)."""
    store = Store(data_dir, readonly=True)
    try:
        return build_snapshot(store, Path(data_dir) / "index", dtype, keep, progress)
    finally:
        store.close()


def build_snapshot(store: Store, index_dir: Path, dtype: str, keep: int, progress: bool) -> Manifest:
    """Builds the next index generation from one read transaction of `store`, then keeps the
    newest `keep` generations on disk."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the generation just built), got {keep}")
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RebuildError(f"another rebuild of {index_dir} is running; wait for it to finish") from None
        generation = 1 + max([0, *map(generation_of, index_dir.glob("index-*.usearch"))])
        started = time.perf_counter()
        with store.read() as view:
            model, seq, count = view.model(), view.seq(), view.count()
            if model is None:
                raise RebuildError(f"the store in {store.path} is empty: enrol images first")
            index = new_index(dtype, store.feature_width() or DIMENSIONS)
            bar = tqdm(total=count, unit="rec", desc=f"index generation {generation}", disable=not progress)
            ids, features = [], []
            for record in view.records():
                ids.append(record.id)
                features.append(record.feature)
                if len(ids) == BATCH:
                    index.add(np.array(ids, np.uint64), np.array(features, np.float32))
                    bar.update(len(ids))
                    ids, features = [], []
            if ids:
                index.add(np.array(ids, np.uint64), np.array(features, np.float32))
                bar.update(len(ids))
            bar.close()
        name = f"index-{generation}.usearch"
        temporary = index_dir / (name + ".tmp")
        index.save(str(temporary))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        checksum = file_sha256(temporary)
        os.replace(temporary, index_dir / name)
        fsync_directory(index_dir)
        manifest = Manifest(
            generation, len(index), model, seq, dtype, name, time.time(), checksum, time.perf_counter() - started
        )
        manifest.write(index_dir)
        remove_old_generations(index_dir, generation, keep)
        return manifest


def remove_old_generations(index_dir: Path, current: int, keep: int) -> None:
    """Keeps the newest `keep` index files (the current one always); a service still mapping an
    older one keeps its copy until it lets go."""
    for path in index_dir.glob("index-*.usearch"):
        if generation_of(path) <= current - max(keep, 1):
            path.unlink()


# Load ----------------------------------------------------------------------------------------


def load_snapshot(index_dir: Path, manifest: Manifest, model: str | None, dimensions: int) -> Index:
    """Memory-maps the snapshot a manifest names, after checking it belongs to this store."""
    if model is not None and manifest.model != model:
        raise SnapshotError(
            f"index generation {manifest.generation} was built for model {manifest.model!r}, "
            f"the store holds {model!r}: {FIX}"
        )
    path = index_dir / manifest.file
    if not path.exists():
        raise SnapshotError(f"{path} named by {MANIFEST} is missing: {FIX}")
    if file_sha256(path) != manifest.sha256:
        raise SnapshotError(f"{path} does not match the checksum in {MANIFEST}: the file is damaged; {FIX}")
    try:
        snapshot = Index.restore(str(path), view=True)
    except Exception as error:  # usearch raises plain RuntimeError/ValueError for damaged files
        raise SnapshotError(f"{path} cannot be loaded ({error}): {FIX}") from None
    if snapshot is None or len(snapshot) != manifest.count or snapshot.ndim != dimensions:
        found = "nothing" if snapshot is None else f"{len(snapshot)} vectors of {snapshot.ndim} dimensions"
        raise SnapshotError(f"{path} holds {found}, its manifest says {manifest.count}: the file is damaged; {FIX}")
    snapshot.expansion_search = EXPANSION_SEARCH  # a search setting: not stored in the file
    return snapshot


class SnapshotLoader:
    """Loads the snapshot the manifest names when it differs from the one in use.

    Called from a background thread (a poll, SIGHUP or the ReloadIndex RPC): requests keep
    being served from the current snapshot while the new one loads, then it is swapped in.
    A missing, stale or damaged snapshot raises SnapshotError and leaves the current one in use.
    """

    def __init__(self, index: UsearchIndex, index_dir: Path):
        self.index = index
        self.index_dir = index_dir
        self._lock = threading.Lock()  # one load at a time
        self.loaded: bytes | None = None  # the manifest in use, as read
        self.manifest: Manifest | None = None  # and parsed
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
                if manifest.snapshot_seq < change_log.pruned_to(self.index.store):
                    raise SnapshotError(
                        f"index generation {manifest.generation} is older than the store's change log "
                        f"(changes up to {change_log.pruned_to(self.index.store)} were pruned): {FIX}"
                    )
                snapshot = load_snapshot(self.index_dir, manifest, self.index.store.model(), self.index.dimensions)
            except SnapshotError:
                self.refused = raw
                raise
            self.index.swap(snapshot, manifest.generation, manifest.snapshot_seq)
            previous, self.loaded, self.manifest = self.manifest, raw, manifest
            # The log keeps the changes after the previous snapshot, so a worker still on it (its
            # poll comes a moment later) can still catch up.
            pruned = change_log.prune(self.index.store, previous.snapshot_seq) if previous else 0
            log.info(
                "index generation %d in use: %d vectors, snapshot at change %d, %d enrolled and %d removed since; "
                "%d changes it covers pruned from the log",
                manifest.generation,
                manifest.count,
                manifest.snapshot_seq,
                self.index.stats().unindexed,
                self.index.stats().removed,
                pruned,
            )
            return True


# Watch ---------------------------------------------------------------------------------------


async def watch(loader: SnapshotLoader, poll_s: float, wake: asyncio.Event) -> None:
    """Loads a new snapshot when one appears (polled), or at once when woken (SIGHUP)."""
    while True:
        force = wake.is_set()
        wake.clear()
        try:
            await asyncio.to_thread(loader.load_if_new, force)
        except SnapshotError as error:
            log.error("index not reloaded, still serving generation %d: %s", loader.index.generation, error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), poll_s)


# The backend --------------------------------------------------------------------------------


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the generation just built), got {value}")
    return value


class UsearchBackend(UsearchIndex):
    """The usearch index in this process with its snapshot life cycle (an IndexBackend): opened
    with the newest snapshot, following every commit in its live part, reloaded on request and
    watched for new snapshots; rebuilt as a new snapshot file in DATA_DIR/index."""

    rebuild_help = "a new snapshot in DATA_DIR/index"

    def __init__(self, store: Store, index_dir: Path, dimensions: int = DIMENSIONS) -> None:
        super().__init__(store, dimensions)
        self.loader = SnapshotLoader(self, index_dir)

    @classmethod
    def open(cls, settings: "Settings", store: Store) -> "UsearchBackend":
        backend = cls(store, settings.index_dir, settings.dimensions)
        try:
            backend.loader.load_if_new()
        except SnapshotError as error:
            log.error("no index snapshot loaded; serving every record from memory: %s", error)
        return backend

    def on_commit(self) -> None:
        self.apply_changes()

    def reload(self) -> bool:
        return self.loader.load_if_new(True)

    async def watch(self, poll_s: float, wake: asyncio.Event) -> None:
        await watch(self.loader, poll_s, wake)

    @property
    def manifest(self) -> Manifest | None:
        return self.loader.manifest

    def bytes_on_disk(self) -> int:
        return bytes_on_disk(self.loader.index_dir)

    @classmethod
    def add_rebuild_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dtype", choices=["f32", "f16", "i8"], default=SNAPSHOT_DTYPE, help="vector storage")
        parser.add_argument("--keep", type=at_least_one, default=2, help="index generations to keep on disk (>= 1)")

    @classmethod
    def rebuild(cls, arguments: argparse.Namespace) -> str:
        try:
            manifest = rebuild(arguments.data_dir, arguments.dtype, arguments.keep, progress=not arguments.quiet)
        except StoreError as error:
            raise RebuildError(str(error)) from None
        return (
            f"index generation {manifest.generation}: {manifest.count} records of model {manifest.model}, "
            f"store change {manifest.snapshot_seq}, {manifest.build_seconds:.1f} s -> {arguments.data_dir / 'index'}"
        )
