"""Reading a request stream ahead of the answers, bounded in count, bytes and idle time."""

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from service import metrics


class Sized(Protocol):
    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Window:
    """How much of a request stream is read ahead of the answers, and how long it may idle."""

    items: int = 64
    bytes: int = 64 << 20
    idle_s: float = 60.0


class StreamIdle(TimeoutError):
    """The caller sent nothing on its stream for longer than the idle limit."""


class ReadAhead:
    """The requests read but not yet taken into a batch, bounded in count and in bytes (one
    request always fits, however large, and the end of the stream, `None`, always fits).
    What it holds is counted in the stream read-ahead gauges until taken or `dropped`."""

    def __init__(self, window: Window):
        self.window = window
        self.items: collections.deque[Sized | None] = collections.deque()
        self.bytes = 0
        self._changed = asyncio.Condition()

    def ready(self) -> bool:
        return bool(self.items)

    def _fits(self, item: Sized | None) -> bool:
        if item is None or not self.items:
            return True
        return len(self.items) < self.window.items and self.bytes + item.size <= self.window.bytes

    async def put(self, item: Sized | None) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(item))
            self.items.append(item)
            self._count(item, +1)
            self._changed.notify_all()

    async def get(self) -> Sized | None:
        async with self._changed:
            await self._changed.wait_for(self.ready)
            item = self.items.popleft()
            self._count(item, -1)
            self._changed.notify_all()
            return item

    def drop(self) -> None:
        """Forgets what was read and not taken (the stream ended early)."""
        while self.items:
            self._count(self.items.popleft(), -1)

    def _count(self, item: Sized | None, sign: int) -> None:
        if item is not None:
            self.bytes += sign * item.size
            metrics.STREAM_READ_AHEAD.inc(sign)
            metrics.STREAM_READ_AHEAD_BYTES.inc(sign * item.size)


def read_ahead(requests: AsyncIterator[Sized], window: Window) -> tuple[ReadAhead, asyncio.Task]:
    """Starts reading `requests` into a ReadAhead (ending with None); the task raises what broke
    the stream, StreamIdle included."""
    queue = ReadAhead(window)

    async def read() -> None:
        try:
            stream = aiter(requests)
            while True:
                try:
                    request = await asyncio.wait_for(anext(stream), window.idle_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise StreamIdle(f"no request for {window.idle_s:g} s: the stream is closed") from None
                await queue.put(request)
        finally:
            await queue.put(None)  # the end of the stream, or of what could be read

    return queue, asyncio.create_task(read())


async def answered_in_order(
    requests: AsyncIterator[Sized], window: Window, parallel: int, answer: Callable[[Sized], Awaitable]
) -> AsyncIterator:
    """Answers a request stream in order, up to `parallel` requests at once (answered_in_batches,
    one request a batch)."""
    async with contextlib.aclosing(
        answered_in_batches(requests, window, parallel, 1, lambda batch: answer(batch[0]))
    ) as answers:
        async for answered in answers:
            yield answered


async def answered_in_batches(
    requests: AsyncIterator[Sized],
    window: Window,
    parallel: int,
    batch_size: int,
    answer: Callable[[list[Sized]], Awaitable],
) -> AsyncIterator:
    """Answers a request stream in order, batch by batch: a batch is up to `batch_size` of the
    requests that have arrived, up to `parallel` batches are answered at once, and at most `window`
    requests are read ahead. Each batch's answer goes as soon as it and those before it are made,
    without waiting for the next request (a caller may send one, read its answer, then send the
    next). What breaks the stream (StreamIdle included) is raised after the answers already made."""
    queue, reader = read_ahead(requests, window)
    ended = False

    async def next_batch() -> list[Sized]:
        nonlocal ended
        batch = [await queue.get()]
        while len(batch) < batch_size and batch[-1] is not None and queue.ready():
            batch.append(await queue.get())
        if batch[-1] is None:
            batch.pop()
            ended = True
        return batch

    in_flight: collections.deque[asyncio.Future] = collections.deque()
    getting: asyncio.Task | None = None
    try:
        while not ended or in_flight or getting:
            if getting is None and not ended and len(in_flight) < parallel:
                getting = asyncio.create_task(next_batch())
            head = in_flight[0] if in_flight else None
            await asyncio.wait([task for task in (getting, head) if task], return_when=asyncio.FIRST_COMPLETED)
            if head is not None and head.done():
                yield in_flight.popleft().result()
            elif getting is not None and getting.done():
                batch, getting = getting.result(), None
                if batch:
                    in_flight.append(asyncio.ensure_future(answer(batch)))
        await reader
    finally:
        reader.cancel()
        if getting is not None:
            getting.cancel()
        queue.drop()
        for task in in_flight:  # a later answer may fail with an earlier one's error: already raised
            task.cancel()
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
