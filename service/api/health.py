"""gRPC health: liveness, readiness, and a status per component, each with its reason.

- "" is liveness: SERVING while the process runs and answers (restart it if not).
- "neardup.v1.NearDup" is readiness: SERVING while Triton (and the model) answer and the store
  can write; route traffic elsewhere if not.
- "triton", "store", "index" are the components ("triton" is SERVING while any Triton of
  --triton-url is; with several, "triton:<url>" says which are up); "index" is NOT_SERVING while the live part
  (records enrolled or removed since the snapshot) is past --index-stale-records: still
  correct, searched more slowly, so a rebuild is due; it does not take readiness down.

A store that failed to write (disk full) is probed at every poll with a 1 MiB write, so it
reports SERVING again as soon as writes work, without waiting for a caller to try. The reasons
are logged when they change and listed in Stats.not_ready.
"""

import asyncio
import logging
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2

from service import metrics
from service.storage.records import StoreUnwritable
from service.storage.store import Store
from service.storage.vector_index import VectorIndex
from service.triton.client import Hasher

log = logging.getLogger(__name__)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


LIVENESS = ""
READINESS_COMPONENTS = ("triton", "store")


class Readiness:
    def __init__(
        self,
        hasher: Hasher,
        store: Store,
        index: VectorIndex,
        servicer: health.aio.HealthServicer,
        readiness: str,
        poll_s: float,
        stale_records: int,
        restart_triton: Callable[[str], None] | None = None,
    ):
        """`restart_triton(why)`: the bundled Triton's restart, for a model whose process died."""
        self.hasher = hasher
        self.store = store
        self.index = index
        self.servicer = servicer
        self.readiness = readiness  # the health name that means "send me traffic"
        self.poll_s = poll_s
        self.stale_records = stale_records
        self.restart_triton = restart_triton
        self.problems: dict[str, str] = {"triton": "not polled yet"}  # component -> why it is not ready
        self.mixed_runtimes: set[str] = set()  # stored runtimes already warned about

    async def run(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_s)

    async def poll(self) -> None:
        if self.restart_triton:
            for url, why in self.hasher.take_model_failures().items():
                self.restart_triton(f"model {self.hasher.model!r} in Triton at {url} cannot run: {why}")
        tritons = await self.hasher.ready()
        down = {url: why for url, (ready, why) in tritons.items() if not ready}
        # Ready while any Triton is (requests go to those that are up); with several, each has a name.
        each = {f"triton:{url}": down.get(url) for url in tritons} if len(tritons) > 1 else {}
        components = {
            "triton": "; ".join(down.values()) if len(down) == len(tritons) else None,
            **each,
            "store": await asyncio.to_thread(self._store_problem),
            "index": self._index_problem(),
        }
        for name, problem in components.items():
            if problem != self.problems.get(name):
                if problem:
                    log.warning("health: %s NOT_SERVING: %s", name, problem)
                else:
                    log.info("health: %s SERVING", name)
            await self.servicer.set(name, NOT_SERVING if problem else SERVING)
        self.problems = {name: problem for name, problem in components.items() if problem}
        # A stale index still answers; one that cannot be reached (Milvus down) does not.
        ready = not any(name in self.problems for name in READINESS_COMPONENTS) and not self.index.failure
        metrics.READY.set(ready)  # first: whoever sees the health answer sees the gauge agree
        await self.servicer.set(self.readiness, SERVING if ready else NOT_SERVING)
        await asyncio.to_thread(self._warn_of_mixed_runtimes)

    def _warn_of_mixed_runtimes(self) -> None:
        """Logs once per runtime when the store holds features another runtime made than the one
        serving: distances between the two kinds are slightly off (docs/deployment.md)."""
        serving = self.hasher.runtime
        if not serving:
            return
        for runtime, count in self.store.runtimes().items():
            if runtime != serving and runtime not in self.mixed_runtimes:
                self.mixed_runtimes.add(runtime)
                log.warning(
                    "%d enrolments in the store were made by %r, this service makes features with %r: their "
                    "distances to new ones differ slightly; re-enrol them to match",
                    count,
                    runtime,
                    serving,
                )

    def _index_problem(self) -> str | None:
        if self.index.failure:
            return self.index.failure
        stats = self.index.stats()
        live = stats.unindexed + stats.removed
        if live <= self.stale_records:
            return None
        return (
            f"stale: {stats.unindexed} records enrolled and {stats.removed} removed since index generation "
            f"{stats.generation} (over --index-stale-records {self.stale_records}): run `neardup index rebuild`"
        )

    def _store_problem(self) -> str | None:
        if self.store.write_failure is None:
            return None
        try:
            self.store.probe_write()
        except StoreUnwritable as error:
            return str(error)
        return None
