"""The gRPC front service: validates requests, delegates, and maps failures to status codes."""

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import signal
from collections.abc import Callable

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image

from service import geometry
from service.background import Background
from service.config import Settings, validate_views
from service.decision import Candidate, decide, is_borderline
from service.enrollment import Enroller
from service.hashing import Hasher, TritonRejected, TritonTimeout, TritonUnavailable
from service.imaging import ImageError, decode, decode_canvas
from service.index import IndexError_, SearchIndex, SnapshotLoader
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from service.store import ModelMismatch, Store
from service.triton_process import BundledTriton

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NearDup"].full_name
# Leave the caller this much of its deadline to receive our answer.
DEADLINE_MARGIN_S = 0.05


class RequestError(ValueError):
    """The request itself is wrong (not the image)."""


class KeyNotFound(LookupError):
    pass


STATUS_OF_ERROR: list[tuple[type[Exception], grpc.StatusCode]] = [
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (IndexError_, grpc.StatusCode.FAILED_PRECONDITION),
    (TritonUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TritonTimeout, grpc.StatusCode.UNAVAILABLE),
    (TritonRejected, grpc.StatusCode.INTERNAL),
]
HANDLED = tuple(error for error, _ in STATUS_OF_ERROR)


async def abort(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    code = next(code for kind, code in STATUS_OF_ERROR if isinstance(error, kind))
    log.info("%s: %s: %s", method, code.name, error)
    await context.abort(code, str(error))


def grpc_errors(method: Callable) -> Callable:
    """The one place where exceptions become gRPC statuses (unary and streaming methods)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context: grpc.aio.ServicerContext):
            try:
                async for response in method(self, request, context):
                    yield response
            except HANDLED as error:
                await abort(context, method.__name__, error)

        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except HANDLED as error:
            await abort(context, method.__name__, error)

    return wrapper


class NearDupServicer(pb_grpc.NearDupServicer):
    def __init__(
        self,
        settings: Settings,
        hasher: Hasher,
        store: Store,
        index: SearchIndex,
        loader: SnapshotLoader,
        background: Background,
    ):
        self.settings = settings
        self.policy = settings.policy
        self.background = background
        self.hasher = hasher
        self.store = store
        self.index = index
        self.loader = loader
        self.enroller = Enroller(hasher, store, index, self._describe, settings.model_identity, settings.enroll_views)

    def _triton_timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.settings.triton_timeout_s
        return min(self.settings.triton_timeout_s, remaining - DEADLINE_MARGIN_S)

    def _decode(self, image: bytes) -> np.ndarray:
        s = self.settings
        return decode_canvas(image, s.canvas_size, s.max_image_pixels, s.min_image_side)

    def _describe(self, image: bytes) -> tuple[np.ndarray, bytes]:
        """The canvas, and the keypoints for the geometric check when it is on."""
        if not self.policy.geometric_band:
            return self._decode(image), b""
        s = self.settings
        rgb = decode(image, geometry.MAX_SIDE, s.max_image_pixels, s.min_image_side)
        canvas = rgb.resize((s.canvas_size, s.canvas_size), Image.Resampling.BILINEAR)
        return np.asarray(canvas), geometry.keypoints(rgb)

    def _inliers(self, image: bytes, candidate: Candidate) -> int:
        with self.store.read() as view:
            stored = view.keypoints(candidate.record.id)
        s = self.settings
        return geometry.inliers(decode(image, geometry.MAX_SIDE, s.max_image_pixels, s.min_image_side), stored)

    @grpc_errors
    async def Hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        views = request.views or self.settings.enroll_views
        problem = validate_views(views)
        if problem:
            raise RequestError(problem)
        canvas = await asyncio.to_thread(self._decode, request.image)
        [descriptor] = await self.hasher.hash(canvas[None], [views], self._triton_timeout(context))
        return pb.HashResponse(
            feature=descriptor.feature.tolist(),
            threshold=descriptor.threshold,
            model=self.settings.model,
            views=views,
            input_size=self.settings.input_size,
        )

    @grpc_errors
    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        top_k = request.top_k or 1
        if not 1 <= top_k <= self.settings.max_top_k:
            raise RequestError(f"top_k must be between 1 and {self.settings.max_top_k}, got {top_k}")
        await asyncio.to_thread(self.store.check_model, self.settings.model_identity)
        digest = hashlib.sha256(request.image).digest()
        generation = self.index.generation
        with self.store.read() as view:
            identical = view.by_digest(digest)[:top_k]
        background_similarity = 0.0
        if identical:
            candidates = [Candidate(record, 0.0) for record in identical]
        else:
            canvas = await asyncio.to_thread(self._decode, request.image)
            [descriptor] = await self.hasher.hash(
                canvas[None], [self.settings.check_views], self._triton_timeout(context)
            )
            # The margin rule needs a second neighbour even when the caller asks for one.
            nearest = await asyncio.to_thread(self.index.nearest, descriptor.feature, max(top_k, 2))
            candidates = [Candidate(record, distance) for record, distance in nearest]
            background_similarity = self.background.similarity(descriptor.feature)
        decision = decide(self.policy, candidates, background_similarity)
        # Byte-identical to an enrolled image is a duplicate under any rule.
        each = [True] * len(candidates) if identical else decision.each
        is_duplicate = bool(identical) or decision.is_duplicate
        inliers = -1
        if self.policy.geometric_band and not identical and is_borderline(self.policy, decision):
            inliers = await asyncio.to_thread(self._inliers, request.image, candidates[0])
            if inliers >= geometry.MIN_INLIERS:
                is_duplicate, each = True, [True, *each[1:]]
        matches = [
            pb.Match(
                key=c.record.key,
                id=c.record.id,
                distance=c.distance,
                threshold=c.record.threshold,
                is_duplicate=duplicate,
                metadata=c.record.metadata,
                inliers=inliers if position == 0 else -1,
            )
            for position, (c, duplicate) in enumerate(zip(candidates, each, strict=True))
        ][:top_k]
        return pb.CheckResponse(
            is_duplicate=is_duplicate,
            matches=matches,
            model=self.settings.model,
            index_generation=generation,
            identical=bool(identical),
            score=decision.score,
            decision_rule=self.policy.rule,
            background_similarity=background_similarity,
        )

    @grpc_errors
    async def Enroll(self, requests, context: grpc.aio.ServicerContext):
        async for result in self.enroller.stream(
            requests,
            self.settings.enroll_window,
            self.settings.enroll_batch,
            lambda: self._triton_timeout(context),
        ):
            yield result

    @grpc_errors
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        removed = await asyncio.to_thread(self.store.delete, request.key)
        if removed is None:
            raise KeyNotFound(f"no image is enrolled under key {request.key!r}")
        await asyncio.to_thread(self.index.catch_up)
        log.info("deleted %r (id %d)", request.key, removed.id)
        return pb.DeleteResponse()

    @grpc_errors
    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        with self.store.read() as view:
            records = view.count()
        index_dir = self.settings.data_dir / "index"
        index_bytes = sum(p.stat().st_size for p in index_dir.glob("*.usearch")) if index_dir.exists() else 0
        return pb.StatsResponse(
            records=records,
            index_generation=self.index.generation,
            index_size=self.index.snapshot_size,
            unindexed_records=self.index.unindexed,
            model=self.settings.model,
            bytes_on_disk=self.store.bytes_on_disk() + index_bytes,
            input_size=self.settings.input_size,
            views_per_check=self.settings.check_views,
            views_per_enroll=self.settings.enroll_views,
        )

    @grpc_errors
    async def ReloadIndex(self, request: pb.ReloadIndexRequest, context) -> pb.ReloadIndexResponse:
        reloaded = await asyncio.to_thread(self.loader.load_if_new, True)
        return pb.ReloadIndexResponse(index_generation=self.index.generation, reloaded=reloaded)


class TritonHealth:
    """Polls Triton and keeps the gRPC health status in step: NOT_SERVING until the model is ready."""

    def __init__(self, hasher: Hasher, servicer: health.aio.HealthServicer, poll_s: float):
        self.hasher = hasher
        self.servicer = servicer
        self.poll_s = poll_s
        self.ready = False

    async def run(self) -> None:
        while True:
            ready, why = await self.hasher.ready()
            if ready != self.ready:
                log.log(logging.INFO if ready else logging.WARNING, "health: %s", "SERVING" if ready else why)
                self.ready = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await self.servicer.set(name, status)
            await asyncio.sleep(self.poll_s)


async def watch_index(loader: SnapshotLoader, poll_s: float, wake: asyncio.Event) -> None:
    """Loads a new index snapshot when one appears (polled), or when woken (SIGHUP)."""
    while True:
        force = wake.is_set()
        wake.clear()
        try:
            await asyncio.to_thread(loader.load_if_new, force)
        except IndexError_ as error:
            log.error("index not reloaded, still serving generation %d: %s", loader.index.generation, error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), poll_s)


def open_store(settings: Settings) -> tuple[Store, SearchIndex, SnapshotLoader]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.data_dir)
    stored_model = store.model()
    if stored_model not in (None, settings.model_identity):
        log.error(
            "the store in %s holds features of %s, the service runs %s: Check and Enroll will fail",
            settings.data_dir,
            stored_model,
            settings.model_identity,
        )
    index = SearchIndex(store)
    loader = SnapshotLoader(index, settings.data_dir / "index")
    try:
        loader.load_if_new()  # first, so that only the changes after the snapshot are replayed
    except IndexError_ as error:
        log.error("no index snapshot loaded; serving every record from memory: %s", error)
    index.catch_up()
    log.info(
        "store %s: %d records, index generation %d, %d records not in it",
        store.path,
        index.snapshot_size + index.unindexed,
        index.generation,
        index.unindexed,
    )
    return store, index, loader


async def serve(settings: Settings) -> None:
    """Runs the service until SIGINT or SIGTERM, then stops it and the bundled Triton cleanly."""
    store, index, loader = open_store(settings)
    bundled = None
    triton_url = settings.triton_url
    if not triton_url:
        bundled = BundledTriton(
            [settings.model], settings.model_repository, restart_delay_s=settings.triton_restart_delay_s
        )
        bundled.start()
        triton_url = bundled.url
    hasher = Hasher(triton_url, settings.model)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", settings.max_request_bytes),
        ]
    )
    background = Background.load(settings.data_dir, settings.model_identity, settings.background_k)
    servicer = NearDupServicer(settings, hasher, store, index, loader, background)
    pb_grpc.add_NearDupServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}: is the port in use?")
    await server.start()
    log.info("neardup listening on %s (Triton %s, model %s)", address, triton_url, settings.model)
    reload_now = asyncio.Event()
    tasks = [
        asyncio.create_task(TritonHealth(hasher, health_servicer, settings.health_poll_s).run()),
        asyncio.create_task(watch_index(loader, settings.index_poll_s, reload_now)),
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
    await server.stop(grace=10)
    await hasher.close()
    if bundled is not None:
        await bundled.stop()
    store.close()
    log.info("stopped")
