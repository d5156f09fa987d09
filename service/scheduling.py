"""Interactive calls ahead of bulk work, and bulk callers served in turn.

Every call runs in a lane, set for it by the interceptor chain (api/interceptors.py: Lanes):
INTERACTIVE (Check, a Hash of no more views than a Check's, the catalogue's small calls) or BULK
(Enroll, CheckStream, FindDuplicates, a Hash of more views). Bulk work does not start while an
interactive call is in progress (for at most BULK_PATIENCE_S, so that it is never starved): on a
small host two threads of work share one core's caches and units whatever their OS priority, so
a Check is only fast if the bulk work beside it pauses. Each bulk piece is short, so a Check
waits for the pieces already under way and no more:

- **CPU work.** Every stage hands its CPU work to threads through `asyncio.to_thread`, that is to
  the event loop's default executor, a LaneExecutor: interactive work runs at once; bulk work on
  BULK_THREADS threads (at a lower OS priority), each taking the waiting work caller by caller
  in turn, so that one caller's 48 streams do not hold back another caller's one.
- **Model requests** (triton/client.py): one bulk request in flight at a time, callers in turn
  (BulkTurns), and the model has a second instance, so an interactive request never waits
  behind a bulk batch (model_repository: count 2).

The caller is the token's name with auth on, else the connection (the peer's address and port).
"""

import asyncio
import collections
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

INTERACTIVE, BULK = "interactive", "bulk"
LANE: contextvars.ContextVar[str] = contextvars.ContextVar("lane", default=INTERACTIVE)
WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")  # the caller: token name or peer

BULK_THREADS = 2  # bulk CPU work in progress at once
BULK_NICE = 10  # their OS priority
BULK_PATIENCE_S = 1.0  # the longest a piece of bulk work waits for the interactive calls to end
INTERACTIVE_THREADS = 8
POLL_S = 0.005  # how often a waiting bulk model request looks again


class InteractiveCalls:
    """How many interactive calls are in progress; bulk work waits for none (or its patience)."""

    def __init__(self):
        self.count = 0
        self._none = threading.Condition()

    def enter(self) -> None:
        with self._none:
            self.count += 1

    def leave(self) -> None:
        with self._none:
            self.count -= 1
            if not self.count:
                self._none.notify_all()

    def wait_in_thread(self) -> None:
        with self._none:
            self._none.wait_for(lambda: not self.count, BULK_PATIENCE_S)

    async def wait(self) -> None:
        waited = 0.0
        while self.count and waited < BULK_PATIENCE_S:
            await asyncio.sleep(POLL_S)
            waited += POLL_S


INTERACTIVE_CALLS = InteractiveCalls()


@contextlib.contextmanager
def in_lane(lane: str, caller: str):
    """Runs a call in its lane, as `caller`, counted while it is interactive."""
    LANE.set(lane)
    WHO.set(caller)
    if lane == INTERACTIVE:
        INTERACTIVE_CALLS.enter()
    try:
        yield
    finally:
        if LANE.get() == INTERACTIVE:
            INTERACTIVE_CALLS.leave()


def become_bulk() -> None:
    """The call turned out to be bulk work (a Hash of many views): from now on it waits as bulk."""
    if LANE.get() == INTERACTIVE:
        LANE.set(BULK)
        INTERACTIVE_CALLS.leave()


class CallerQueues:
    """Waiting items per caller, taken caller by caller in turn (not thread-safe: hold a lock)."""

    def __init__(self):
        self.waiting: dict[str, collections.deque] = {}

    def __len__(self) -> int:
        return sum(map(len, self.waiting.values()))

    def add(self, caller: str, item) -> None:
        self.waiting.setdefault(caller, collections.deque()).append(item)

    def take(self):
        """The oldest item of the caller that has waited longest since it was last served."""
        caller, items = next(iter(self.waiting.items()))
        item = items.popleft()
        del self.waiting[caller]  # to the back of the turn, with what it still has waiting
        if items:
            self.waiting[caller] = items
        return item


class LaneExecutor(ThreadPoolExecutor):
    """The event loop's default executor (asyncio.to_thread): interactive work on the pool's own
    threads, bulk work on BULK_THREADS niced threads, callers in turn, none while an interactive
    call is in progress."""

    def __init__(self):
        super().__init__(INTERACTIVE_THREADS, thread_name_prefix="interactive")
        self._bulk = CallerQueues()
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
        with contextlib.suppress(OSError):  # a system that refuses: bulk work runs at normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)
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
        self._waiting = CallerQueues()
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
