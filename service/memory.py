"""Memory the process frees goes back to the system, not only to the allocator.

glibc serves an allocation of 128 KiB or more by mmap, but raises that threshold (up to 32 MiB)
each time such a block is freed; past that, a decoded picture's blocks come from the heap, and a
burst of large images leaves the process that much larger for good. A fixed threshold keeps large
blocks mmapped, so that each goes back when it is freed; the smaller blocks left free in each
thread's heap after a burst are handed back by a trim every TRIM_EVERY_S. (Six callers sending
30 Mpx PNGs for 40 s: 1.8 GB resident after the burst against 0.2 GB before, 0.29 GB with the
threshold; docs/operations.md, "Memory after a burst".)
"""

import ctypes
import logging
import threading
import time

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 4 * 2**20
TRIM_EVERY_S = 5.0


def return_freed_memory() -> None:
    """Fixes glibc's mmap threshold at MMAP_THRESHOLD_BYTES and starts the periodic trim; nothing
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        log.info("not glibc: freed memory is returned as the allocator decides")
        return
    if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: memory freed after a burst may stay with the process")

    def trim_forever() -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            libc.malloc_trim(0)

    threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()
