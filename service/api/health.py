"""gRPC health: readiness follows Triton (and its model) and whether the store can write.

Each component has its own health name ("triton", "store"); the service's readiness ("" and
neardup.v1.NearDup) is SERVING only while every component is. A store that failed to write
(disk full) is probed with a tiny write at every poll, so it reports SERVING again as soon as
writes work, without waiting for a caller to try.
"""

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from service.storage.records import StoreUnwritable
from service.storage.store import Store
from service.triton.client import Hasher

log = logging.getLogger(__name__)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    def __init__(
        self, hasher: Hasher, store: Store, servicer: health.aio.HealthServicer, services: list[str], poll_s: float
    ):
        self.hasher = hasher
        self.store = store
        self.servicer = servicer
        self.services = services  # the names that mean "the whole service"
        self.poll_s = poll_s
        self.problems: dict[str, str] = {"triton": "not polled yet"}  # component -> why it is not ready

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_s)

    async def poll(self) -> None:
        triton_ready, why = await self.hasher.ready()
        components = {"triton": None if triton_ready else why, "store": await asyncio.to_thread(self._store_problem)}
        for name, problem in components.items():
            if problem != self.problems.get(name):
                if problem:
                    log.warning("health: %s NOT_SERVING: %s", name, problem)
                else:
                    log.info("health: %s SERVING", name)
            await self.servicer.set(name, NOT_SERVING if problem else SERVING)
        self.problems = {name: problem for name, problem in components.items() if problem}
        for name in self.services:
            await self.servicer.set(name, NOT_SERVING if self.problems else SERVING)

    def _store_problem(self) -> str | None:
        if self.store.write_failure is None:
            return None
        try:
            self.store.probe_write()
        except StoreUnwritable as error:
            return str(error)
        return None
