"""`neardup serve --workers N`: N front processes on one port, sharing one Triton and one data directory.

The supervisor takes the data directory's lock, starts the bundled Triton (unless --triton-url
names others) and runs N workers: each is `neardup serve` with the same settings, bound to the
port with SO_REUSEPORT (the kernel spreads connections over them), pointed at the same Triton.
Each worker opens the same LMDB (LMDB serialises write transactions across processes) and
memory-maps the same index snapshot; before each Check it applies the store's change log, so an
image enrolled through one worker is found by any other at once. SIGTERM and SIGINT stop the
workers (each finishes its calls), then Triton; SIGHUP is passed on (tokens, certificates, index).
A worker that dies is started again; one that exits with status 1 (it could not start: a port
in use, a damaged store) stops them all.
"""

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

from service.config import Settings
from service.flags import as_arguments, as_environment
from service.storage.ownership import DataDirInUse, DataDirLock
from service.triton.process import BundledTriton

log = logging.getLogger(__name__)

WORKER_OF = "NEARDUP_WORKER_OF"  # set in a worker's environment: the supervisor's pid
CANNOT_START = 1
STOP_GRACE_S = 30


def is_worker() -> bool:
    return bool(os.environ.get(WORKER_OF))


async def supervise(settings: Settings) -> int:
    try:
        lock = DataDirLock(settings.server.data_dir)
    except DataDirInUse as error:
        log.critical("cannot start: %s", error)
        return CANNOT_START
    bundled, triton_url = None, settings.triton.url
    if not triton_url:
        triton = settings.triton
        bundled = BundledTriton(
            [settings.served_model], triton.model_repository, triton.restart_delay_s, triton.model_file
        )
        bundled.start()
        triton_url = bundled.url
    workers = [spawn(settings, number, triton_url) for number in range(settings.server.workers)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def pass_on_sighup() -> None:  # tokens, certificates and the index, in every worker
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, pass_on_sighup)
    log.info("%d workers on port %d (pids %s)", len(workers), settings.server.port, [w.pid for w in workers])
    code = 0
    while not stop.is_set():
        for number, worker in enumerate(workers):
            if worker.poll() is None:
                continue
            if worker.returncode == CANNOT_START:
                log.critical("worker %d could not start: stopping", number)
                code = CANNOT_START
                stop.set()
                break
            log.error("worker %d (pid %d) exited with %s: starting it again", number, worker.pid, worker.returncode)
            workers[number] = spawn(settings, number, triton_url)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    log.info("stopping %d workers", len(workers))
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            await asyncio.to_thread(worker.wait, STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            worker.kill()
    if bundled is not None:
        await bundled.stop()
    lock.release()
    return code


def spawn(settings: Settings, number: int, triton_url: str) -> subprocess.Popen:
    """Worker `number`: the same settings, one process, the shared Triton, its own metrics port."""
    metrics_port = settings.server.metrics_port + number if settings.server.metrics_port else 0
    overrides = ["--workers", "1", "--triton-url", triton_url, "--metrics-port", str(metrics_port)]
    command = [sys.executable, "-m", "service.cli", "serve", *as_arguments(settings), *overrides]
    return subprocess.Popen(command, env={**os.environ, **as_environment(settings), WORKER_OF: str(os.getpid())})
