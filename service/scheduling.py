"""Interactive calls ahead of bulk work, and bulk callers served in turn.

Every call runs in a lane, set for it by the interceptor chain (api/interceptors.py: Lanes):
INTERACTIVE (Check, a Hash of no more views than a Check's, the catalogue's small calls) or BULK
(Enroll, CheckStream, FindDuplicates, a Hash of more views). A piece of bulk work starts once no
interactive call has run for QUIET_S, or after BULK_PATIENCE_S at most, so that it is never
starved: on a small host two threads of work slow each other down whatever their OS priority, so
a Check is only fast if the bulk work beside it pauses. A Check shares the machine with the bulk
pieces already under way and no more:

- **CPU work.** Every stage hands its CPU work to threads through `asyncio.to_thread`, that is to
  the event loop's default executor, a LaneExecutor: interactive work runs at once; bulk work on
  BULK_THREADS threads, each taking the waiting work caller by caller in turn, so that one
  caller's 48 streams do not hold back another caller's one.
- **Model requests** (triton/client.py): one bulk request in flight at a time, callers in turn
  (BulkTurns), and the model has a second instance, so an interactive request never waits
  behind a bulk batch (model_repository: count 2).

The caller is the token's name with auth on, else the connection (the peer's address and port).
"""

import asyncio
import collections
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from service import metrics

INTERACTIVE, BULK = "interactive", "bulk"
LANE: contextvars.ContextVar[str] = contextvars.ContextVar("lane", default=INTERACTIVE)
WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")  # the caller: token name or peer

BULK_THREADS = 2  # bulk CPU work in progress at once
BULK_PATIENCE_S = 1.0  # the longest a piece of bulk work waits for the interactive calls to end
INTERACTIVE_THREADS = 8
QUIET_S = 0.05  # bulk work starts once no interactive call has run for this long


class CallsInProgress:
    """How many calls are in progress, and when the last one ended. Bulk work waits until no
    interactive call has run for QUIET_S (a caller sending Checks one after another leaves gaps of
    a millisecond between them), or for at most BULK_PATIENCE_S."""

    def __init__(self):
        self.count = 0
        self.last_ended = 0.0  # time.monotonic() when the last one ended
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            self.count += 1

    def leave(self) -> None:
        with self._changed:
            self.count -= 1
            self.last_ended = time.monotonic()
            self._changed.notify_all()

    def _quiet_in(self) -> float:
        """Seconds until it has been quiet for QUIET_S (0: it has; QUIET_S: a call is in progress)."""
        return QUIET_S if self.count else max(0.0, self.last_ended + QUIET_S - time.monotonic())

    def wait_in_thread(self) -> None:
        give_up = time.monotonic() + BULK_PATIENCE_S
        with self._changed:
            while (wait := min(self._quiet_in(), give_up - time.monotonic())) > 0:
                self._changed.wait(wait)

    async def wait(self) -> None:
        give_up = time.monotonic() + BULK_PATIENCE_S
        while (wait := min(self._quiet_in(), give_up - time.monotonic())) > 0:
            await asyncio.sleep(wait)


INTERACTIVE_CALLS = CallsInProgress()
ALL_CALLS = CallsInProgress()  # both lanes: the service is idle when none is in progress (memory.py)


def idle_since() -> float | None:
    """time.monotonic() since when no call has been in progress; None while one is."""
    return None if ALL_CALLS.count else ALL_CALLS.last_ended


@contextlib.contextmanager
def in_lane(lane: str, caller: str):
    """Runs a call in its lane, as `caller`: counted among the calls in progress, and among the
    interactive ones while it is interactive."""
    LANE.set(lane)
    WHO.set(caller)
    ALL_CALLS.enter()
    if lane == INTERACTIVE:
        INTERACTIVE_CALLS.enter()
    try:
        yield
    finally:
        if LANE.get() == INTERACTIVE:
            INTERACTIVE_CALLS.leave()
        ALL_CALLS.leave()


def become_bulk() -> None:
    """The call turned out to be bulk work (a Hash of many views): from now on it waits as bulk."""
    if LANE.get() == INTERACTIVE:
        LANE.set(BULK)
        INTERACTIVE_CALLS.leave()


class CallerQueues:
    """Waiting items per caller, taken caller by caller in turn (not thread-safe: hold a lock);
    counted in neardup_bulk_work_waiting{kind}."""

    def __init__(self, kind: str):
        self.waiting: dict[str, collections.deque] = {}
        self.gauge = metrics.BULK_WAITING.labels(kind)

    def __len__(self) -> int:
        return sum(map(len, self.waiting.values()))

    def add(self, caller: str, item) -> None:
        self.waiting.setdefault(caller, collections.deque()).append(item)
        self.gauge.inc()

    def take(self):
        """The oldest item of the caller that has waited longest since it was last served."""
        caller, items = next(iter(self.waiting.items()))
        item = items.popleft()
        del self.waiting[caller]  # to the back of the turn, with what it still has waiting
        if items:
            self.waiting[caller] = items
        self.gauge.dec()
        return item


class LaneExecutor(ThreadPoolExecutor):
    """The event loop's default executor (asyncio.to_thread): interactive work on the pool's own
    threads, bulk work on BULK_THREADS threads, callers in turn, each piece once the interactive
    calls leave it room (CallsInProgress)."""

    def __init__(self):
        super().__init__(INTERACTIVE_THREADS, thread_name_prefix="interactive")
        self._bulk = CallerQueues("cpu")
        self._bulk_ready = threading.Condition()
        self._bulk_threads: list[threading.Thread] = []
        self._closing = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        if LANE.get() != BULK:
            return super().submit(fn, *args, **kwargs)
        future = Future()
        with self._bulk_ready:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._bulk.add(WHO.get(), (future, fn, args, kwargs))
            if len(self._bulk_threads) < BULK_THREADS:
                thread = threading.Thread(target=self._run_bulk, name=f"bulk_{len(self._bulk_threads)}", daemon=True)
                self._bulk_threads.append(thread)
                thread.start()
            self._bulk_ready.notify()
        return future

    def _run_bulk(self) -> None:
        while True:
            with self._bulk_ready:
                self._bulk_ready.wait_for(lambda: self._bulk or self._closing)
                if not self._bulk:
                    return
            INTERACTIVE_CALLS.wait_in_thread()
            with self._bulk_ready:
                if not self._bulk:  # another bulk thread took it meanwhile
                    continue
                future, fn, args, kwargs = self._bulk.take()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to whoever awaits the future
                future.set_exception(error)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._bulk_ready:
            self._closing = True
            if cancel_futures:
                while self._bulk:
                    self._bulk.take()[0].cancel()
            self._bulk_ready.notify_all()
        if wait:
            for thread in self._bulk_threads:
                thread.join()
        super().shutdown(wait, cancel_futures=cancel_futures)


class BulkTurns:
    """One bulk model request in flight at a time, callers in turn, none started while an
    interactive call is in progress; interactive requests never wait."""

    def __init__(self):
        self._waiting = CallerQueues("model")
        self._busy = False

    @contextlib.asynccontextmanager
    async def turn(self):
        if LANE.get() != BULK:
            yield
            return
        if self._busy or self._waiting:
            ready = asyncio.get_running_loop().create_future()
            self._waiting.add(WHO.get(), ready)
            try:
                await ready
            except asyncio.CancelledError:
                if ready.done() and not ready.cancelled():
                    self._next()  # it was this one's turn: pass it on
                raise
        self._busy = True
        try:
            await INTERACTIVE_CALLS.wait()
            yield
        finally:
            self._next()

    def _next(self) -> None:
        while self._waiting:
            ready = self._waiting.take()
            if not ready.done():
                ready.set_result(None)
                return
        self._busy = False


def use_lanes() -> None:
    """Makes a LaneExecutor the running loop's default executor."""
    asyncio.get_running_loop().set_default_executor(LaneExecutor())
