"""The Milvus vector index: the records a Check needs, in a Milvus collection several front
services share (docs/scaling.md).

Each front service keeps its LMDB store as the durable record of what *it* enrolled (its writer
id tags its rows) and pushes the store's change log to the collection: an enrolment upserts the
row of (collection, key), a deletion deletes it if this writer still owns it. The push runs after
every commit (an Enroll is answered once its rows are in Milvus), before every Check, and every
--index-poll-s while Milvus was unreachable; the last change pushed is kept in the store. A Check
searches the collection and builds its candidates from the rows, so a record enrolled through any
front service is found by all; the features are the store's float16 values, so every decision is
the same as on usearch. `neardup index rebuild --backend milvus` loads the whole store again.
MilvusBackend (at the end) is this index as the service's IndexBackend "milvus".
"""

import argparse
import asyncio
import fcntl
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.storage import change_log
from service.storage.manifest import SnapshotError
from service.storage.milvus_rows import (
    ANSWER_FIELDS,
    collection_filter,
    create_collection,
    primary_key,
    record_of,
    row_of,
)
from service.storage.read_view import ReadView
from service.storage.records import DELETE, Record, StoreError, from_u64, u64
from service.storage.store import Store
from service.storage.vector_index import IndexStats, IndexUnavailable, RebuildError
from service.triton.contract import DIMENSIONS

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

# The search asks for a few more neighbours than needed, as on the usearch backend.
SEARCH_EF = 128
EXTRA_CANDIDATES = 8
PUSH_BATCH = 500
NOT_LOADED = 101  # Milvus's code for a collection not loaded into memory


class MilvusUnavailable(IndexUnavailable):
    """Milvus refused or could not be reached; the message says which and why."""


WRITER = b"milvus_writer"


def _pushed_meta(collection: str) -> bytes:
    return f"milvus_pushed:{collection}".encode()


class MilvusIndex:
    """A VectorIndex over a Milvus collection, fed from this data directory's store. Thread-safe;
    pushes from several worker processes on one data directory are serialised by a file lock."""

    failure: str | None = None  # why the last push or search failed, until one succeeds

    def __init__(
        self, store: Store, uri: str, collection: str, model: str, token: str = "", dimensions: int = DIMENSIONS
    ) -> None:
        self.store = store
        self.dimensions = dimensions  # the model's embedding width: the collection's vectors
        self.milvus_collection = collection  # Milvus's; neardup's collections are a field of its rows
        self.model = model
        store.set_meta(WRITER, secrets.token_hex(16).encode(), overwrite=False)  # made once per data directory
        with store.read() as view:
            self.writer = view.meta(WRITER).decode()
        self._push_lock = threading.Lock()
        self._lock_path = Path(store.path.parent) / "milvus.lock"
        try:
            import pymilvus  # the `milvus` extra: only this backend needs it
        except ImportError:
            raise MilvusUnavailable("the milvus backend needs pymilvus: pip install 'neardup[milvus]'") from None
        self._refused = pymilvus.MilvusException
        # pymilvus logs every failed call with its traceback; _call reports failures in one line.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        try:
            self.client = pymilvus.MilvusClient(uri=uri, token=token, timeout=30)
            self._ensure_collection(pymilvus.DataType)
        except pymilvus.MilvusException as error:
            raise MilvusUnavailable(f"Milvus at {uri}: {error.message}") from None

    def _ensure_collection(self, data_types) -> None:
        if not self.client.has_collection(self.milvus_collection):
            create_collection(self.client, self.milvus_collection, data_types, self.dimensions)
            log.info("created Milvus collection %s", self.milvus_collection)
            return
        self.client.load_collection(self.milvus_collection)
        some = self.client.query(self.milvus_collection, filter="", output_fields=["model"], limit=1)
        if some and some[0]["model"] != self.model:
            raise MilvusUnavailable(
                f"collection {self.milvus_collection} holds features of model {some[0]['model']!r}, but the "
                f"service runs {self.model!r}: use another --milvus-collection"
            )

    def nearest(
        self, feature: np.ndarray, k: int, collections: frozenset[str] | None = None
    ) -> list[tuple[Record, float]]:
        """The k nearest rows (in `collections`; None: all), with Euclidean distances recomputed
        from their float16 features. Milvus filters during the search itself."""
        query = np.asarray(feature, dtype=np.float32)
        limit, params = k + EXTRA_CANDIDATES, {"metric_type": "L2", "params": {"ef": SEARCH_EF}}
        where = collection_filter(collections)
        search = functools.partial(self.client.search, output_fields=ANSWER_FIELDS, search_params=params)
        [found] = self._call(lambda: search(self.milvus_collection, [query.tolist()], filter=where, limit=limit))
        records = [record_of(hit["entity"], self.writer) for hit in found]
        scored = [(record, float(np.linalg.norm(query - record.feature.astype(np.float32)))) for record in records]
        return sorted(scored, key=lambda pair: pair[1])[:k]

    def identical(self, sha256: bytes, collections: frozenset[str] | None = None) -> list[Record]:
        """Rows of images with these exact bytes (the digest is hex, so it needs no quoting)."""
        digest = " and ".join(filter(None, [f'sha256 == "{sha256.hex()}"', collection_filter(collections)]))
        rows = self._call(lambda: self.client.query(self.milvus_collection, filter=digest, output_fields=ANSWER_FIELDS))
        return [record_of(row, self.writer) for row in rows]

    def stats(self) -> IndexStats:
        with self.store.read() as view:
            behind = view.seq() - self._pushed(view)
        try:
            [row] = self._call(lambda: self.client.query(self.milvus_collection, filter="", output_fields=["count(*)"]))
            rows = int(row["count(*)"])
        except MilvusUnavailable:
            rows = 0
        return IndexStats(generation=0, snapshot_size=rows, unindexed=max(behind, 0))

    def _call(self, request: Callable):
        """Runs a request; a collection Milvus released (after a restart) is loaded again first."""
        try:
            try:
                result = request()
            except self._refused as error:
                if error.code != NOT_LOADED:
                    raise
                self.client.load_collection(self.milvus_collection)
                result = request()
        except self._refused as error:
            self.failure = f"Milvus collection {self.milvus_collection}: {error.message}"
            raise MilvusUnavailable(self.failure) from None
        self.failure = None
        return result

    def _pushed(self, view: ReadView) -> int:
        return from_u64(view.meta(_pushed_meta(self.milvus_collection)) or u64(0))

    def apply_changes(self) -> None:
        """Pushes the store's changes after the last one pushed; raises MilvusUnavailable (and
        keeps the changes for the next call) when Milvus cannot take them."""
        with self.store.read() as view:
            if self._pushed(view) == view.seq():  # the common case (every Check asks): no lock taken
                return
        with self._push_lock, open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            with self.store.read() as view:
                pushed = self._pushed(view)
                if pushed == view.seq():
                    return
                if pushed == 0 or pushed < change_log.pruned_to(self.store):
                    # The first push, or a usearch rebuild pruned changes not pushed: load everything.
                    self._push_all(view)
                    return
                upserts: dict[str, dict] = {}
                deletions: set[str] = set()
                last = pushed
                for change in view.changes_after(pushed):
                    last = change.seq
                    if change.op == DELETE:
                        upserts.pop(primary_key(change.collection, change.key), None)
                        deletions.add(primary_key(change.collection, change.key))
                        continue
                    record = view.by_id(change.id)
                    if record is not None:  # else a later change deletes it again
                        row = row_of(record, self.writer, load=0)
                        deletions.discard(row["pk"])
                        upserts[row["pk"]] = row
            self._delete_owned(sorted(deletions))
            rows = list(upserts.values())
            for start in range(0, len(rows), PUSH_BATCH):
                self._upsert(rows[start : start + PUSH_BATCH])
            self.store.set_meta(_pushed_meta(self.milvus_collection), u64(last))

    def _upsert(self, rows: list[dict]) -> int:
        if rows:
            self._call(lambda: self.client.upsert(self.milvus_collection, rows))
        return len(rows)

    def _delete_owned(self, keys: list[str]) -> None:
        """Deletes the rows of these primary keys that this writer still owns (not re-enrolled by another)."""
        if not keys:
            return
        rows = self._call(lambda: self.client.get(self.milvus_collection, ids=keys, output_fields=["writer"]))
        owned = [row["pk"] for row in rows if row["writer"] == self.writer]
        if owned:
            self._call(lambda: self.client.delete(self.milvus_collection, ids=owned))

    def push_everything(self, progress: Callable[[int], None] = lambda done: None) -> int:
        """Loads every record of the store (bulk upserts), then deletes this writer's rows from
        earlier loads that the store no longer holds; returns the records loaded."""
        with self._push_lock, open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            with self.store.read() as view:
                return self._push_all(view, progress)

    def _push_all(self, view: ReadView, progress: Callable[[int], None] = lambda done: None) -> int:
        load = time.time_ns()
        seq, batch, done = view.seq(), [], 0
        for record in view.records():
            batch.append(row_of(record, self.writer, load))
            if len(batch) == PUSH_BATCH:
                done += self._upsert(batch)
                progress(done)
                batch = []
        done += self._upsert(batch)
        progress(done)
        # The writer id is hex, so it needs no quoting.
        self._call(
            lambda: self.client.delete(self.milvus_collection, filter=f'writer == "{self.writer}" and load < {load}')
        )
        self.store.set_meta(_pushed_meta(self.milvus_collection), u64(seq))
        return done


def push_while_serving(index: MilvusIndex, poll_s: float) -> None:
    """One round of the background push: retries what a failed push left (Milvus was down)."""
    try:
        index.apply_changes()
    except MilvusUnavailable as error:
        log.warning("changes not pushed to Milvus yet (retrying every %.1f s): %s", poll_s, error)


async def keep_pushing(index: MilvusIndex, poll_s: float) -> None:
    """The background push, every poll_s, for as long as the service runs."""
    while True:
        await asyncio.to_thread(push_while_serving, index, poll_s)
        await asyncio.sleep(poll_s)


class MilvusBackend(MilvusIndex):
    """The Milvus index as an IndexBackend: no snapshots (Milvus serves every change), the store's
    changes pushed after every commit and, while Milvus was unreachable, every poll; rebuilt by
    loading every record of the store into the collection."""

    rebuild_help = "load every record into the Milvus collection"
    manifest = None  # no snapshots
    poll_s = 1.0  # how often the background push retries (the service's --index-poll-s)

    @classmethod
    def connect(
        cls, store: Store, uri: str, collection: str, token_file: str, model: str, dimensions: int
    ) -> "MilvusBackend":
        """The index over a Milvus collection, the token read from its file (never from a flag)."""
        if not uri:
            raise MilvusUnavailable("the milvus backend needs --milvus-uri (e.g. http://milvus:19530)")
        token = Path(token_file).read_text().strip() if token_file else ""
        return cls(store, uri, collection, model, token, dimensions)

    @classmethod
    def open(cls, settings: "Settings", store: Store) -> "MilvusBackend":
        chosen = settings.index
        backend = cls.connect(
            store,
            chosen.milvus_uri,
            chosen.milvus_collection,
            chosen.milvus_token_file,
            settings.model_identity,
            settings.dimensions,
        )
        backend.poll_s = chosen.poll_s
        return backend

    def on_commit(self) -> None:
        push_while_serving(self, self.poll_s)  # a change not pushed now is pushed by `watch`

    def reload(self) -> bool:
        raise SnapshotError("the milvus index backend has no snapshots to reload: Milvus serves every change")

    async def watch(self, poll_s: float, wake: asyncio.Event) -> None:
        await keep_pushing(self, poll_s)

    def bytes_on_disk(self) -> int:
        return 0  # the vectors live in Milvus

    @classmethod
    def add_rebuild_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--milvus-uri",
            default=os.environ.get("NEARDUP_MILVUS_URI", ""),
            help="milvus backend: the Milvus address, as the service's --milvus-uri (env NEARDUP_MILVUS_URI)",
        )
        parser.add_argument(
            "--milvus-collection",
            default=os.environ.get("NEARDUP_MILVUS_COLLECTION", "neardup"),
            help="milvus backend: the collection, as the service's (env NEARDUP_MILVUS_COLLECTION)",
        )
        parser.add_argument(
            "--milvus-token-file",
            default=os.environ.get("NEARDUP_MILVUS_TOKEN_FILE", ""),
            help="milvus backend: a file holding Milvus' token (env NEARDUP_MILVUS_TOKEN_FILE)",
        )

    @classmethod
    def rebuild(cls, arguments: argparse.Namespace) -> str:
        from tqdm import tqdm

        data_dir = arguments.data_dir
        try:
            store = Store(data_dir, readonly=not (data_dir / "store.lmdb").exists())
        except StoreError as error:
            raise RebuildError(str(error)) from None
        try:
            started = time.perf_counter()
            milvus = (arguments.milvus_uri, arguments.milvus_collection, arguments.milvus_token_file)
            index = cls.connect(store, *milvus, store.model() or "", store.feature_width() or DIMENSIONS)
            with tqdm(total=store.count(), unit="record", disable=arguments.quiet) as bar:
                loaded = index.push_everything(lambda done: bar.update(done - bar.n))
        except (MilvusUnavailable, OSError) as error:
            raise RebuildError(str(error)) from None
        finally:
            store.close()
        return (
            f"Milvus collection {arguments.milvus_collection}: {loaded} records loaded from {data_dir} "
            f"in {time.perf_counter() - started:.1f} s"
        )
