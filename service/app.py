"""The composition root: builds every object the service runs with, starts it, and stops it in order.

Start-up: open the store and the index (snapshot first, then the changes after it), pick
Triton (the bundled one unless --triton-url names another), build the core objects and the
gRPC server with its interceptor chain, start the background tasks (Triton health, index
watch) and the signal handlers. Shutdown (SIGINT, SIGTERM): health NOT_SERVING, in-flight calls
finished, then Triton's client, the bundled Triton and the store closed.
"""

import asyncio
import logging
import signal
from dataclasses import dataclass

import lmdb
import numpy as np
from grpc_health.v1 import health

from service import memory, metrics, scheduling, workers
from service.api.health import Readiness
from service.api.security import Security, SecurityError
from service.api.server import PortInUse, add_services, grpc_server
from service.api.servicer import SERVICE_NAME, NearDupServicer
from service.config import Settings
from service.core.catalogue import Catalogue
from service.core.checking import build_checker
from service.core.collections import Collections
from service.core.dismissing import Dismissing
from service.core.enrollment import Enroller, ItemLimits
from service.core.judging import Judge
from service.media.imaging import DecodeBudget, Limits
from service.media.preprocess import Preprocessor
from service.storage.backends import BACKENDS
from service.storage.background import Background
from service.storage.dismissals import Dismissals
from service.storage.ownership import DataDirInUse, DataDirLock
from service.storage.small_views import SmallViews
from service.storage.store import STORE_DAMAGED, Store
from service.storage.vector_index import IndexBackend, IndexUnavailable
from service.supervision import supervise
from service.triton.client import Hasher, TritonTls
from service.triton.process import BundledTriton

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10
DECODE_WAIT_S = 1.0  # a decode waits this long for room in the decode budget, then RESOURCE_EXHAUSTED


@dataclass
class Storage:
    lock: DataDirLock | None  # None in a worker: its supervisor holds it
    store: Store
    index: IndexBackend  # the one --index-backend names (storage/backends.py)
    small_views: SmallViews | None  # None while small views are off (Policy.searches_small_views)

    def close(self) -> None:
        self.store.close()
        if self.lock:
            self.lock.release()


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


def open_storage(settings: Settings) -> Storage:
    """The data directory's lock, the store, and the index over it: the snapshot loaded first,
    so that only the changes after it are replayed; from then on every commit reaches the index."""
    data_dir = settings.server.data_dir
    try:
        lock = None if workers.is_worker() else DataDirLock(data_dir)
    except DataDirInUse as error:
        raise StartupError(str(error)) from None
    try:
        store = Store(data_dir)
        stored_model = store.model()
    except lmdb.Error as error:
        if lock:
            lock.release()
        raise StartupError(STORE_DAMAGED.format(path=data_dir, error=error)) from None
    if stored_model not in (None, settings.model_identity):
        log.error(
            "the store in %s holds features of %s, the service runs %s: Check and Enroll will fail",
            data_dir,
            stored_model,
            settings.model_identity,
        )
    try:
        index = BACKENDS[settings.index.backend].open(settings, store)
        index.apply_changes()
        searched = settings.decision.searches_small_views()
        small_views = SmallViews.following(store, settings.dimensions) if searched else None
    except (lmdb.Error, IndexUnavailable, OSError) as error:
        store.close()
        if lock:
            lock.release()
        if isinstance(error, lmdb.Error):
            raise StartupError(STORE_DAMAGED.format(path=data_dir, error=error)) from None
        raise StartupError(str(error)) from None
    store.subscribe(index.on_commit)
    stats = index.stats()
    log.info(
        "store %s: %d records, index generation %d, %d records not in it, %d small views",
        store.path,
        stats.snapshot_size + stats.unindexed,
        stats.generation,
        stats.unindexed,
        len(small_views) if small_views else 0,
    )
    return Storage(lock, store, index, small_views)


def build_servicer(settings: Settings, storage: Storage, hasher: Hasher, readiness: Readiness) -> NearDupServicer:
    limits, triton, policy = settings.limits, settings.triton, settings.decision
    preprocessor = Preprocessor(
        settings.canvas_size,
        Limits(limits.max_image_pixels, limits.min_image_side, limits.max_decoded_bytes),
        DecodeBudget(limits.decode_budget_bytes, wait_s=DECODE_WAIT_S),
        keypoints=bool(policy.geometric_band),
        references=bool(policy.verification_weight),
        small_view_side=policy.small_view_side if policy.searches_small_views() else 0,
    )
    background = Background.load(
        settings.server.data_dir, settings.model_identity, settings.index.background_k, settings.dimensions
    )
    dismissals = Dismissals(storage.store)
    judge = Judge(storage.store, policy, dismissals)
    checker = build_checker(
        hasher,
        storage.store,
        storage.index,
        preprocessor,
        background,
        policy,
        settings.model_identity,
        triton.check_views,
        judge,
        storage.small_views,
    )
    enroller = Enroller(
        hasher,
        storage.store,
        preprocessor.describe,
        settings.model_identity,
        triton.enroll_views,
        ItemLimits(limits.max_metadata_entries, limits.max_metadata_bytes),
    )

    async def embed(image: bytes, timeout_s: float) -> np.ndarray:  # a dismissed picture, as a Check embeds it
        return (await checker.embed(image, triton.check_views, timeout_s)).feature

    collections = Collections(storage.store, policy, judge.policies)
    dismissing = Dismissing(
        storage.store, dismissals, embed, policy.dismissal_similarity, limits.max_dismissals_per_key
    )
    catalogue = Catalogue(storage.store, storage.index, collections, dismissing, judge, limits.duplicates_cpu_share)
    return NearDupServicer(settings, checker, enroller, catalogue, collections, dismissing, readiness)


def serve_metrics(host: str, port: int, storage: Storage) -> None:
    metrics.watch_state(storage.index, storage.store, storage.small_views)
    try:
        metrics.serve_metrics(host, port)
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {host}:{port}: {error.strerror} (another service on this host? give this "
            "one another --metrics-port, or 0 for none)"
        ) from None
    if port:
        log.info("metrics on http://%s:%d/metrics", host, port)


async def serve(settings: Settings) -> None:
    """Runs the service until SIGINT or SIGTERM, then stops it and the bundled Triton cleanly.

    Raises StartupError, before starting anything that would outlive it, when the data
    directory is in use, the store is damaged or the port is taken."""
    memory.return_freed_memory(scheduling.idle_since)
    scheduling.use_lanes()
    try:
        security = Security.load(settings)
    except SecurityError as error:
        raise StartupError(str(error)) from None
    storage = open_storage(settings)
    try:
        server, address = grpc_server(settings, security)
        serve_metrics(settings.server.metrics_host, settings.server.metrics_port, storage)
    except (PortInUse, StartupError) as error:
        storage.close()
        raise StartupError(str(error)) from None
    bundled = None
    triton = settings.triton
    triton_url = triton.url
    if not triton_url:
        bundled = BundledTriton(
            [settings.served_model], triton.model_repository, triton.restart_delay_s, triton.model_file
        )
        bundled.start()
        triton_url = bundled.url
    hasher = Hasher(
        [url.strip() for url in triton_url.split(",") if url.strip()],
        settings.served_model,
        settings.limits.max_triton_queue,
        TritonTls(triton.ssl_ca, triton.ssl_cert, triton.ssl_key) if triton.ssl_ca or triton.ssl_cert else None,
        dict([triton.header.split("=", 1)]) if triton.header else None,
    )
    health_servicer = health.aio.HealthServicer()
    readiness = Readiness(
        hasher,
        storage.store,
        storage.index,
        health_servicer,
        SERVICE_NAME,
        settings.triton.health_poll_s,
        settings.index.stale_records,
        bundled.restart if bundled else None,
    )
    add_services(server, build_servicer(settings, storage, hasher, readiness), health_servicer)
    await server.start()
    model = settings.model_name + (f" ({triton.model_file})" if triton.model_file else "")
    log.info("neardup listening on %s (%s; Triton %s, model %s)", address, security.describe(), triton_url, model)
    reload_now = asyncio.Event()
    tasks = [
        asyncio.create_task(supervise("readiness", readiness.run)),
        asyncio.create_task(supervise("index watch", lambda: storage.index.watch(settings.index.poll_s, reload_now))),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:  # SIGHUP: tokens, certificates, and the index at once
        security.reload()
        reload_now.set()

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    for task in tasks:
        task.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=SHUTDOWN_GRACE_S)
    await hasher.close()
    if bundled is not None:
        await bundled.stop()
    storage.close()
    log.info("stopped")
