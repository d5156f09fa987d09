"""gRPC health: NOT_SERVING until Triton and the model are ready, and whenever they stop being."""

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from service.triton.client import Hasher

log = logging.getLogger(__name__)


class TritonHealth:
    """Polls Triton and keeps the health status of `services` in step with it."""

    def __init__(self, hasher: Hasher, servicer: health.aio.HealthServicer, services: list[str], poll_s: float):
        self.hasher = hasher
        self.servicer = servicer
        self.services = services
        self.poll_s = poll_s
        self.ready = False

    async def run(self) -> None:
        while True:
            ready, why = await self.hasher.ready()
            if ready != self.ready:
                log.log(logging.INFO if ready else logging.WARNING, "health: %s", "SERVING" if ready else why)
                self.ready = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self.services:
                await self.servicer.set(name, status)
            await asyncio.sleep(self.poll_s)
