"""Memory a burst left free goes back to the system once the service is idle (service/memory.py),
in a process of its own with the real C library."""

import subprocess
import sys
import textwrap

HELD_MB = 150

BURST = textwrap.dedent(f"""
    import time
    from pathlib import Path
    from service import memory

    def heap_mb():
        lines = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in lines if line.startswith("RssAnon:")) / 1024

    idle_since = [None]  # None: a call is in progress
    memory.return_freed_memory(lambda: idle_since[0])
    before = heap_mb()
    blocks = [bytearray(64 << 10) for _ in range({HELD_MB} * 16)]  # 64 KiB each: from the heap, not mmap
    kept = blocks[::64]  # one in 64 stays: the heap cannot shrink from its top
    del blocks
    time.sleep(2 * memory.IDLE_TRIM_S)
    print(round(heap_mb() - before))
    idle_since[0] = time.monotonic()
    time.sleep(2 * memory.IDLE_TRIM_S)
    print(round(heap_mb() - before))
""")


def test_a_bursts_freed_heap_goes_back_once_idle_and_not_while_calls_run():
    ran = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    while_busy, once_idle = (int(line) for line in ran.stdout.split())
    assert while_busy > HELD_MB * 0.8  # freed, but still the process's while calls run (no trim)
    assert once_idle < HELD_MB * 0.2  # given back by the trim once idle
