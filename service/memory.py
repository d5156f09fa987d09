"""Memory the process frees goes back to the system, not only to the allocator.

glibc serves an allocation of 128 KiB or more by mmap, but raises that threshold (up to 32 MiB)
each time such a block is freed; past that, a decoded picture's blocks come from the heap, and a
burst of large images leaves the process that much larger for good. A fixed threshold keeps large
blocks mmapped, so that each goes back when it is freed; the smaller blocks a burst leaves free in
each thread's heap are handed back by a trim: TRIM_DELAY_S after a large decode, and once the
service has had no call in progress for IDLE_TRIM_S (a trim walks every heap and holds its lock,
up to a few tenths of a second on a large one, so it is not run on a timer while calls come).
The threads share ARENAS heaps instead of glibc's eight per core: each heap keeps what was freed
in it, so ten busy threads held ten heaps' worth of free memory after a soak.
With the query's pictures no longer kept (core/query.py), six callers sending 30 Mpx PNGs for 40 s
left 1.8 GB resident against 0.2 GB before, 0.29 GB with the threshold, and the trim takes back the
rest (docs/operations.md, "Memory after a burst").
"""

import ctypes
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt's parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 2**20
ARENAS = 2  # heaps the threads share (glibc's default: 8 per core, each keeping what it freed)
LARGE_DECODE_BYTES = 32 * 2**20  # a decode holding this much is followed by a trim
TRIM_DELAY_S = 5.0
IDLE_TRIM_S = 2.0  # the service idle this long: a trim, once per idle spell

_large_decoded = threading.Event()


def large_decode_done() -> None:
    """A decode of LARGE_DECODE_BYTES or more has ended: trim the heaps once the burst is over."""
    _large_decoded.set()


def return_freed_memory(idle_since: Callable[[], float | None]) -> None:
    """Fixes glibc's mmap threshold at MMAP_THRESHOLD_BYTES and its heaps at ARENAS, and starts the
    trims after large decodes and when idle (`idle_since()`: time.monotonic() since when no call
    has been in progress, None while one is); nothing where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        log.info("not glibc: freed memory is returned as the allocator decides")
        return
    if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: memory freed after a burst may stay with the process")
    if not libc.mallopt(M_ARENA_MAX, ARENAS):
        log.warning("mallopt(M_ARENA_MAX) refused: each thread may keep a heap of its own")

    def trim_when_due() -> None:
        trimmed_idle_spell = None
        while True:
            if _large_decoded.wait(IDLE_TRIM_S / 2):
                time.sleep(TRIM_DELAY_S)  # the Checks that decoded have ended, or the next ones have begun
                _large_decoded.clear()
                libc.malloc_trim(0)
                continue
            idle = idle_since()
            if idle is not None and idle != trimmed_idle_spell and time.monotonic() - idle >= IDLE_TRIM_S:
                trimmed_idle_spell = idle
                libc.malloc_trim(0)

    threading.Thread(target=trim_when_due, name="malloc-trim", daemon=True).start()
