"""Reading a request stream ahead of the answers, bounded in count, bytes and idle time."""

import asyncio
import collections
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
    """Answers a request stream in order, up to `parallel` requests at once, reading at most
    `window` ahead; each answer goes as soon as it and those before it are made, without waiting
    for the next request (a caller may send one, read its answer, then send the next). What breaks
    the stream (StreamIdle included) is raised after the answers already made."""
    queue, reader = read_ahead(requests, window)
    in_flight: collections.deque[asyncio.Task] = collections.deque()
    getting: asyncio.Task | None = None
    ended = False
    try:
        while not ended or in_flight:
            if getting is None and not ended and len(in_flight) < parallel:
                getting = asyncio.create_task(queue.get())
            head = in_flight[0] if in_flight else None
            await asyncio.wait([task for task in (getting, head) if task], return_when=asyncio.FIRST_COMPLETED)
            if head is not None and head.done():
                yield in_flight.popleft().result()
            elif getting is not None and getting.done():
                request, getting = getting.result(), None
                if request is None:
                    ended = True
                else:
                    in_flight.append(asyncio.create_task(answer(request)))
        await reader
    finally:
        reader.cancel()
        if getting is not None:
            getting.cancel()
        queue.drop()
        for task in in_flight:
            task.cancel()
