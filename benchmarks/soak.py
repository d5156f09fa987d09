"""A soak run: mixed Check, Enroll, Delete and index rebuilds against one service for a bounded time.

  python -m benchmarks.soak [--minutes 10] [--images DIR]

Starts `neardup serve` (bundled Triton) on a fresh data directory, enrols a base set, then runs
for `--minutes`: two Check clients, one Enroll client (small streams of new images, some
re-sent), one Delete client (removes some of what was enrolled) and a rebuild every minute.
Prints, per minute, the Check p50/p99 and the service's memory (its own and Triton's), and at
the end the count of failed calls (expected: 0) and memory at start and end.
"""

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import children_of, mosaic, reencoded
from tools.service_process import RunningService, resident_mb


class Soak:
    def __init__(self, service: RunningService, base: dict[str, bytes]):
        self.service = service
        self.stub = service.stub
        self.enrolled = dict(base)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (time, seconds) of each Check
        self.counts = {"Check": 0, "Enroll": 0, "Delete": 0, "rebuild": 0}
        self.next_number = 100_000

    def failed(self, what: str, error: grpc.RpcError) -> None:
        self.failures.append(f"{what}: {error.code().name} {error.details()}")

    def checks(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                key, image = rng.choice(list(self.enrolled.items()))
            started = time.monotonic()
            try:
                self.stub.Check(pb.CheckRequest(image=reencoded(image), top_k=3), timeout=30)
                self.latencies.append((started, time.monotonic() - started))
                self.counts["Check"] += 1
            except grpc.RpcError as error:
                self.failed(f"Check {key}", error)

    def enrolments(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                numbers = range(self.next_number, self.next_number + 8)
                self.next_number += 8
            images = {f"soak/{n}": mosaic(n) for n in numbers}
            try:
                requests = (pb.EnrollRequest(key=k, image=v) for k, v in images.items())
                list(self.stub.Enroll(requests, timeout=60))
                with self.lock:
                    self.enrolled |= images
                self.counts["Enroll"] += len(images)
            except grpc.RpcError as error:
                self.failed("Enroll", error)
            self.stop.wait(0.5)

    def deletions(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            with self.lock:
                added = [key for key in self.enrolled if key.startswith("soak/")]
                key = rng.choice(added) if len(added) > 20 else None
                if key:
                    del self.enrolled[key]
            if key:
                try:
                    self.stub.Delete(pb.DeleteRequest(key=key), timeout=30)
                    self.counts["Delete"] += 1
                except grpc.RpcError as error:
                    self.failed(f"Delete {key}", error)
            self.stop.wait(1.0)

    def rebuilds(self) -> None:
        command = [sys.executable, "-m", "service.cli", "index", "rebuild", "--data-dir", str(self.service.data_dir)]
        while not self.stop.wait(60):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                self.failures.append(f"rebuild: {done.stderr[-300:]}")
            self.counts["rebuild"] += 1


def descendants(pid: int) -> list[int]:
    children = children_of(pid)
    return children + [grandchild for child in children for grandchild in descendants(child)]


def memory(service: RunningService) -> str:
    """Resident memory of the service and of Triton with its model processes."""
    own = resident_mb(service.process.pid)
    triton = sum(resident_mb(pid) for pid in descendants(service.process.pid))
    return f"service {own:.0f} MB, Triton {triton:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--base", type=int, default=300, help="images enrolled before the soak")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        service = RunningService(Path(directory) / "data").wait_serving()
        try:
            base = {f"base/{n}": mosaic(n) for n in range(arguments.base)}
            list(service.stub.Enroll((pb.EnrollRequest(key=k, image=v) for k, v in base.items()), timeout=600))
            soak = Soak(service, base)
            start_memory = memory(service)
            print(f"start: {len(base)} enrolled; {start_memory}", flush=True)
            threads = [threading.Thread(target=soak.checks, args=(seed,)) for seed in (1, 2)]
            threads += [threading.Thread(target=work) for work in (soak.enrolments, soak.deletions, soak.rebuilds)]
            for thread in threads:
                thread.start()
            began = time.monotonic()
            minute = 0
            while time.monotonic() - began < arguments.minutes * 60:
                time.sleep(min(60, arguments.minutes * 60 - (time.monotonic() - began)))
                window = [s for t, s in soak.latencies if began + minute * 60 <= t < began + (minute + 1) * 60]
                minute += 1
                p50, p99 = (np.percentile(window, 50) * 1e3, np.percentile(window, 99) * 1e3) if window else (0, 0)
                print(
                    f"minute {minute}: {len(window)} Checks, p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
                    f"{memory(service)}; failures so far {len(soak.failures)}",
                    flush=True,
                )
            soak.stop.set()
            for thread in threads:
                thread.join(120)
            stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
            print(f"done: {soak.counts}; {stats.records} records, index generation {stats.index_generation}")
            print(f"memory at start: {start_memory}; at end: {memory(service)}")
            print(f"failed calls: {len(soak.failures)}")
            for failure in soak.failures[:20]:
                print("  ", failure)
        finally:
            service.stop()


if __name__ == "__main__":
    main()
