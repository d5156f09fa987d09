"""The Triton client: canvases to (feature, threshold) descriptors, and Triton's errors classified."""

import asyncio
import itertools
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from service import metrics, scheduling
from service.overload import DeadlinePassed, Overloaded
from service.triton import contract

# Reconnect fast after Triton restarts: gRPC's default backoff grows to two minutes.
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


# What Triton's python backend says of a model whose process died; Triton does not restart it.
MODEL_PROCESS_DEAD = "is not healthy"
PROBE_TIMEOUT_S = 10.0


class TritonUnavailable(RuntimeError):
    """Triton or the model cannot answer now; retrying later may work."""


class TritonTimeout(RuntimeError):
    """Triton did not answer within the deadline."""


class TritonRejected(RuntimeError):
    """Triton answered with an error for this input: a bug or a model mismatch, not a transient fault."""


@dataclass(frozen=True)
class Descriptor:
    feature: np.ndarray  # float32 [the model's width], unit length
    threshold: float
    runtime: str = ""  # what made it (contract.RUNTIME)
    windows: np.ndarray | None = None  # float32 [contract.WINDOW_COUNT, the model's width], when asked for


@dataclass(frozen=True)
class TritonTls:
    """TLS to an external Triton: a CA to trust, and a client certificate for mutual TLS."""

    ca: str
    cert: str = ""
    key: str = ""

    def client_options(self) -> dict:
        return {
            "ssl": True,
            "root_certificates": self.ca or None,
            "private_key": self.key or None,
            "certificate_chain": self.cert or None,
        }


class Endpoint:
    """One Triton: its client, and whether it was up at the last poll or call."""

    def __init__(self, url: str, model: str, tls: TritonTls | None, headers: dict[str, str]):
        self.url = url
        self.model = model
        self.headers = headers
        self.client = triton.InferenceServerClient(
            url, channel_args=CHANNEL_ARGS, **(tls.client_options() if tls else {})
        )
        self.up = True  # until a poll or a call says otherwise
        self.model_failure = ""  # why a call found a model process dead, until a probe or a restart

    async def infer(self, canvases: np.ndarray, views: list[int], timeout_s: float, windows: bool = False):
        image = triton.InferInput(contract.IMAGE, list(canvases.shape), "UINT8")
        image.set_data_from_numpy(canvases)
        view_counts = triton.InferInput(contract.VIEWS, [len(views), 1], "INT32")
        view_counts.set_data_from_numpy(np.array(views, dtype=np.int32).reshape(-1, 1))
        names = (contract.FEATURE, contract.THRESHOLD, contract.RUNTIME) + ((contract.WINDOWS,) if windows else ())
        outputs = [triton.InferRequestedOutput(name) for name in names]
        started = time.perf_counter()
        try:
            result = await self.client.infer(
                self.model,
                [image, view_counts],
                outputs=outputs,
                client_timeout=max(timeout_s, 0.001),
                headers=self.headers,
            )
        except InferenceServerException as error:
            classified = self._classify(error)
            if MODEL_PROCESS_DEAD in (error.message() or ""):
                self.model_failure = error.message()
            metrics.TRITON_ERRORS.labels(type(classified).__name__.removeprefix("Triton").lower()).inc()
            if isinstance(classified, TritonUnavailable):
                self.up = False
            raise classified from None
        metrics.TRITON_SECONDS.observe(time.perf_counter() - started)
        metrics.TRITON_REQUESTS.labels(self.url).inc()
        return result

    def _classify(self, error: InferenceServerException) -> Exception:
        status = str(error.status() or "")
        where = f"Triton at {self.url}, model {self.model!r}"
        if status.endswith(grpc.StatusCode.DEADLINE_EXCEEDED.name):
            return TritonTimeout(f"{where} did not answer in time")
        unready = ("is not ready", MODEL_PROCESS_DEAD)
        if status.endswith(grpc.StatusCode.UNAVAILABLE.name) or any(s in (error.message() or "") for s in unready):
            return TritonUnavailable(f"{where} is unavailable ({error.message()}); retry shortly")
        return TritonRejected(f"{where} failed: {error.message()}")

    async def ready(self) -> tuple[bool, str]:
        """Whether the model can serve here now, and if not, why. Triton goes on calling a model ready
        after its process died (the python backend's stub killed): once a call has found it so, each
        poll sends it a blank canvas until it answers again (the bundled Triton is restarted
        instead: Readiness takes the failures first, take_model_failures)."""
        try:
            if not await self.client.is_server_live(headers=self.headers, client_timeout=2):
                why = f"Triton at {self.url} is not live"
            elif not await self.client.is_model_ready(self.model, headers=self.headers, client_timeout=2):
                why = f"model {self.model!r} is not loaded in Triton at {self.url}"
            elif self.model_failure and not await self._answers():
                why = f"model {self.model!r} in Triton at {self.url} cannot run: {self.model_failure}"
            else:
                why = ""
        except InferenceServerException as error:
            why = f"Triton at {self.url} is unreachable: {error.message()}"
        self.up = not why
        return self.up, why or "ready"

    async def _answers(self) -> bool:
        """Does the model embed a blank canvas now? (It clears model_failure when it does.)"""
        blank = np.zeros((1, contract.MIN_CANVAS, contract.MIN_CANVAS, 3), np.uint8)
        try:
            await self.infer(blank, [1], PROBE_TIMEOUT_S)
        except (TritonUnavailable, TritonTimeout, TritonRejected):
            return False
        self.model_failure = ""
        return True


class Hasher:
    """Sends canvases with their view counts to the Triton model and reads back descriptors.

    Requests are spread over the Tritons that are up, in turn; one that fails as unavailable is
    skipped (the request goes to the next) until a health poll finds it back. At most
    `max_queued` views are queued for or in Triton at once, so a burst turns into quick
    Overloaded answers (or waiting Enroll streams) rather than a Triton queue that every
    caller's deadline runs out in.
    """

    def __init__(self, urls: list[str], model: str, max_queued: int = 256, tls: TritonTls | None = None, headers=None):
        self.endpoints = [Endpoint(url, model, tls, dict(headers or {})) for url in urls]
        self.model = model
        self.runtime = ""  # what the model last said makes its features
        self.max_queued = max_queued
        self.queued = 0
        self._room = asyncio.Condition()
        self._turn = itertools.count()
        self._bulk_turns = scheduling.BulkTurns()

    async def hash(
        self, canvases: np.ndarray, views: list[int], timeout_s: float, wait: bool = False, windows: bool = False
    ) -> list[Descriptor]:
        """Descriptors of the canvases, in order; batches over the model's limit go as several
        requests. Past the queue bound: Overloaded at once, or with `wait` a wait for room. With
        `windows`, each descriptor holds its canvas's window embeddings too (contract.WINDOWS)."""
        if timeout_s <= 0:
            raise DeadlinePassed("the call's deadline passed before the model was asked; nothing was done")
        # In views of the default input side (the windows' one view counts as several); one request
        # larger than the bound runs alone.
        work = min(sum(views) * (contract.WINDOW_VIEW_COST if windows else 1), self.max_queued)
        async with self._room:
            if self.queued + work > self.max_queued:
                if not wait:
                    raise Overloaded(
                        f"{self.queued} views are queued for the model (limit {self.max_queued}); retry with backoff"
                    )
                await self._room.wait_for(lambda: self.queued + work <= self.max_queued)
            self.queued += work
            metrics.TRITON_QUEUED.set(self.queued)
        try:
            size = contract.MAX_BATCH
            chunks = range(0, len(canvases), size)
            parts = await asyncio.gather(
                *(self._infer(canvases[i : i + size], views[i : i + size], timeout_s, windows) for i in chunks)
            )
        finally:
            async with self._room:
                self.queued -= work
                metrics.TRITON_QUEUED.set(self.queued)
                self._room.notify_all()
        return [descriptor for part in parts for descriptor in part]

    def _rotation(self) -> list[Endpoint]:
        """The endpoints that are up, starting with the next in turn (all of them if none is up:
        the last poll may be stale)."""
        up = [endpoint for endpoint in self.endpoints if endpoint.up] or self.endpoints
        first = next(self._turn) % len(up)
        return up[first:] + up[:first]

    async def _infer(self, canvases: np.ndarray, views: list[int], timeout_s: float, windows: bool) -> list[Descriptor]:
        metrics.TRITON_BATCH.observe(len(canvases))
        deadline = time.monotonic() + timeout_s
        async with self._bulk_turns.turn():  # a bulk request (each of its batches) waits for its turn
            if time.monotonic() >= deadline:
                raise DeadlinePassed("the call's deadline passed while it waited for its turn at the model")
            rotation = self._rotation()
            for attempt, endpoint in enumerate(rotation, 1):
                try:
                    result = await endpoint.infer(canvases, views, deadline - time.monotonic(), windows)
                    break
                except TritonUnavailable:
                    if attempt == len(rotation) or time.monotonic() >= deadline:
                        raise
        features = result.as_numpy(contract.FEATURE)
        thresholds = result.as_numpy(contract.THRESHOLD).reshape(-1)
        runtimes = [bytes(r).decode() for r in result.as_numpy(contract.RUNTIME).reshape(-1)]
        if runtimes and runtimes[0] != self.runtime:
            self.runtime = runtimes[0]
            metrics.RUNTIME.info({"runtime": self.runtime})
        windowed = result.as_numpy(contract.WINDOWS) if windows else [None] * len(features)
        if windowed is None:
            raise TritonRejected(f"model {self.model!r} returned no {contract.WINDOWS}: its model_repository is older")
        described = zip(features, thresholds, runtimes, windowed, strict=True)
        return [Descriptor(f, float(t), r, w) for f, t, r, w in described]

    async def ready(self) -> dict[str, tuple[bool, str]]:
        """Each Triton's readiness: url -> (ready, why not)."""
        answers = await asyncio.gather(*(endpoint.ready() for endpoint in self.endpoints))
        return {endpoint.url: answer for endpoint, answer in zip(self.endpoints, answers, strict=True)}

    def take_model_failures(self) -> dict[str, str]:
        """url -> why, for the Tritons where a call found a model process dead since the last time
        asked (forgotten here: the caller restarts them). A probe cannot tell: with several
        instances of the model, it may reach one that is alive."""
        failed = {endpoint.url: endpoint.model_failure for endpoint in self.endpoints if endpoint.model_failure}
        for endpoint in self.endpoints:
            endpoint.model_failure = ""
        return failed

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()
