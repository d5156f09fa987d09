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

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.health import TritonHealth
from service.api.interceptors import RequestIdLogFilter, interceptor_chain
from service.api.servicer import SERVICE_NAME, NearDupServicer
from service.config import Settings
from service.core.checking import Checker
from service.core.enrollment import Enroller
from service.media.preprocess import Preprocessor
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from service.storage import snapshots
from service.storage.background import Background
from service.storage.snapshots import SnapshotError, SnapshotLoader
from service.storage.store import Store
from service.storage.usearch_index import UsearchIndex
from service.triton.client import Hasher
from service.triton.process import BundledTriton

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
SHUTDOWN_GRACE_S = 10


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


@dataclass
class Storage:
    store: Store
    index: UsearchIndex
    loader: SnapshotLoader


def open_storage(settings: Settings) -> Storage:
    """The store, and the index over it: the snapshot loaded first, so that only the changes
    after it are replayed; from then on every commit reaches the index."""
    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir)
    stored_model = store.model()
    if stored_model not in (None, settings.model_identity):
        log.error(
            "the store in %s holds features of %s, the service runs %s: Check and Enroll will fail",
            data_dir,
            stored_model,
            settings.model_identity,
        )
    index = UsearchIndex(store)
    loader = SnapshotLoader(index, settings.index_dir)
    try:
        loader.load_if_new()
    except SnapshotError as error:
        log.error("no index snapshot loaded; serving every record from memory: %s", error)
    index.apply_changes()
    store.subscribe(index.apply_changes)
    stats = index.stats()
    log.info(
        "store %s: %d records, index generation %d, %d records not in it",
        store.path,
        stats.snapshot_size + stats.unindexed,
        stats.generation,
        stats.unindexed,
    )
    return Storage(store, index, loader)


def build_servicer(settings: Settings, storage: Storage, hasher: Hasher) -> NearDupServicer:
    limits, triton, policy = settings.limits, settings.triton, settings.decision
    preprocessor = Preprocessor(
        settings.canvas_size, limits.max_image_pixels, limits.min_image_side, keypoints=bool(policy.geometric_band)
    )
    background = Background.load(settings.server.data_dir, settings.model_identity, settings.index.background_k)
    checker = Checker(
        hasher, storage.store, storage.index, preprocessor, background, policy, settings.model_identity,
        triton.check_views,
    )  # fmt: skip
    enroller = Enroller(hasher, storage.store, preprocessor.describe, settings.model_identity, triton.enroll_views)
    return NearDupServicer(settings, checker, enroller, storage.store, storage.index, storage.loader)


def grpc_server(settings: Settings, servicer: NearDupServicer, health_servicer: health.aio.HealthServicer):
    limit = settings.limits.max_request_bytes
    server = grpc.aio.server(
        interceptors=interceptor_chain(),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    pb_grpc.add_NearDupServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.server.host}:{settings.server.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}: is the port in use?")
    return server, address


async def serve(settings: Settings) -> None:
    """Runs the service until SIGINT or SIGTERM, then stops it and the bundled Triton cleanly."""
    storage = open_storage(settings)
    bundled = None
    triton_url = settings.triton.url
    if not triton_url:
        bundled = BundledTriton(
            [settings.triton.model], settings.triton.model_repository, restart_delay_s=settings.triton.restart_delay_s
        )
        bundled.start()
        triton_url = bundled.url
    hasher = Hasher(triton_url, settings.triton.model)
    health_servicer = health.aio.HealthServicer()
    server, address = grpc_server(settings, build_servicer(settings, storage, hasher), health_servicer)
    await server.start()
    log.info("neardup listening on %s (Triton %s, model %s)", address, triton_url, settings.triton.model)
    reload_now = asyncio.Event()
    triton_health = TritonHealth(hasher, health_servicer, ["", SERVICE_NAME], settings.triton.health_poll_s)
    tasks = [
        asyncio.create_task(triton_health.run()),
        asyncio.create_task(snapshots.watch(storage.loader, settings.index.poll_s, reload_now)),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    for task in tasks:
        task.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=SHUTDOWN_GRACE_S)
    await hasher.close()
    if bundled is not None:
        await bundled.stop()
    storage.store.close()
    log.info("stopped")
