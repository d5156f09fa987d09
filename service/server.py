"""The gRPC front service: validates requests, delegates, and maps failures to status codes."""

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.config import Settings, validate_views
from service.hashing import Hasher, TritonRejected, TritonTimeout, TritonUnavailable
from service.imaging import ImageError, decode_canvas
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from service.triton_process import BundledTriton

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NearDup"].full_name
# Leave the caller this much of its deadline to receive our answer.
DEADLINE_MARGIN_S = 0.05


class RequestError(ValueError):
    """The request itself is wrong (not the image)."""


STATUS_OF_ERROR: list[tuple[type[Exception], grpc.StatusCode]] = [
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (TritonUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TritonTimeout, grpc.StatusCode.UNAVAILABLE),
    (TritonRejected, grpc.StatusCode.INTERNAL),
]


def grpc_errors(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """The one place where exceptions become gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except tuple(error for error, _ in STATUS_OF_ERROR) as error:
            code = next(code for kind, code in STATUS_OF_ERROR if isinstance(error, kind))
            log.info("%s: %s: %s", method.__name__, code.name, error)
            await context.abort(code, str(error))

    return wrapper


class NearDupServicer(pb_grpc.NearDupServicer):
    def __init__(self, settings: Settings, hasher: Hasher):
        self.settings = settings
        self.hasher = hasher

    def _triton_timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.settings.triton_timeout_s
        return min(self.settings.triton_timeout_s, remaining - DEADLINE_MARGIN_S)

    async def _canvas(self, image: bytes) -> np.ndarray:
        s = self.settings
        return await asyncio.to_thread(decode_canvas, image, s.canvas_size, s.max_image_pixels, s.min_image_side)

    @grpc_errors
    async def Hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        views = request.views or self.settings.views
        problem = validate_views(views)
        if problem:
            raise RequestError(problem)
        canvas = await self._canvas(request.image)
        [descriptor] = await self.hasher.hash(canvas[None], [views], self._triton_timeout(context))
        return pb.HashResponse(
            feature=descriptor.feature.tolist(),
            threshold=descriptor.threshold,
            model=self.settings.model,
            views=views,
            input_size=self.settings.input_size,
        )


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


async def serve(settings: Settings) -> None:
    """Runs the service until SIGINT or SIGTERM, then stops it and the bundled Triton cleanly."""
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
    pb_grpc.add_NearDupServicer_to_server(NearDupServicer(settings, hasher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}: is the port in use?")
    monitor = TritonHealth(hasher, health_servicer, settings.health_poll_s)
    await server.start()
    log.info("neardup listening on %s (Triton %s, model %s)", address, triton_url, settings.model)
    monitor_task = asyncio.create_task(monitor.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    monitor_task.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=10)
    await hasher.close()
    if bundled is not None:
        await bundled.stop()
    log.info("stopped")
