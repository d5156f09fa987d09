"""A mixed-load soak of the real service: is an interactive Check still fast, is nothing acknowledged
lost, is memory given back?

  python -m benchmarks.soak [--minutes 10] [--images tests/images] [--idle-seconds 30] [--out soak.json]

Starts `neardup serve` (the bundled Triton, auth on: a token file with one caller, loopback), enrols
the folder's pictures, then times Checks of re-encoded copies one at a time, alone (idle), and then
for --minutes beside:
- an Enroll stream of new pictures, as fast as the service takes them (every acknowledged key kept);
- a Delete every second of one of those, and an index rebuild every minute;
- a slow CheckStream: one request a second, its answers read every two seconds;
- oversized images: a 36 Mpx JPEG Checked in a loop;
- unauthenticated callers: four threads sending 8 MB Checks without a token.
Then it stops the load, waits 10 s, restarts the service and counts its records. Prints the
interactive Check's p50 and p99, idle and under load, and their ratio; the acknowledged enrolments
(less those deleted) and how many the restarted service lacks; the front service's resident memory
before the load, at its peak and after (the bundled Triton's processes are not counted), before and
after by kind (its heaps; pages of mapped files: the store, the index, libraries); the CPU each
process used during the load; and each load's calls by outcome (a gRPC status, or the exception a
rebuild raised).
"""

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from service.api.auth import new_token
from service.api.channels import Credentials, channel
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import children_of, mosaic, reencoded
from tools.service_process import RunningService, cpu_seconds, resident_mb, resident_parts_mb

UNAUTHENTICATED_CALLERS = 4


class Load:
    """Threads that call the service until stopped, counting each call's outcome."""

    def __init__(self):
        self.stop = threading.Event()
        self.codes: dict[str, Counter] = {}
        self.threads: list[threading.Thread] = []

    def run(self, name: str, call) -> None:
        counted = self.codes.setdefault(name, Counter())

        def loop():
            while not self.stop.is_set():
                try:
                    call()
                    counted["OK"] += 1
                except grpc.RpcError as error:
                    counted[error.code().name] += 1
                    time.sleep(0.05)
                except subprocess.SubprocessError as error:  # a rebuild that failed
                    counted[type(error).__name__] += 1

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100)) if values else float("nan")


def timed_checks(stub, copies: list[bytes], until) -> list[float]:
    """Milliseconds of each Check of a copy, one at a time, until `until()` says stop."""
    spent = []
    while not until():
        started = time.perf_counter()
        stub.Check(pb.CheckRequest(image=random.choice(copies)), timeout=120)
        spent.append(1000 * (time.perf_counter() - started))
    return spent


def oversized_jpeg(side: int = 6000) -> bytes:
    """A smooth picture of side x side pixels (small as a file, large once decoded)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, from /proc."""
    children = children_of(pid)
    return children + [grandchild for child in children for grandchild in descendants(child)]


def cpu_by_process(service_pid: int) -> dict[str, float]:
    """CPU seconds used so far: the front service, its Triton, this benchmark's own threads (the load
    and the timed Checks: on this host, not the callers' hosts as in production), and the rebuilds
    it ran (its children that ended)."""
    ended_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "front service": cpu_seconds(service_pid),
        "Triton": sum(cpu_seconds(pid) for pid in descendants(service_pid)),
        "this benchmark": time.process_time(),
        "index rebuilds": ended_children.ru_utime + ended_children.ru_stime,
    }


def metric(port: int, name: str) -> float:
    """One unlabelled metric's value, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return next(float(line.split()[1]) for line in lines if line.startswith(name + " "))


def soak(images: Path, minutes: float, idle_seconds: float, folder: Path) -> dict:
    pictures = {path.name: path.read_bytes() for path in sorted(images.glob("*.jpg"))}
    copies = [reencoded(data) for data in pictures.values()]
    token, entry = new_token("soak", ["check", "enroll"])
    (folder / "tokens.json").write_text(json.dumps({"tokens": [entry]}))
    flags = ("--auth-tokens", str(folder / "tokens.json"))
    service = RunningService(folder / "data", *flags, credentials=Credentials(token=token)).wait_serving()
    address = f"127.0.0.1:{service.port}"
    stub = service.stub
    requests = (pb.EnrollRequest(key=name, image=data) for name, data in pictures.items())
    enrolled_first = sum(r.status == pb.EnrollResult.ENROLLED for r in stub.Enroll(requests, timeout=600))

    started = time.monotonic()
    idle = timed_checks(stub, copies, lambda: time.monotonic() - started > idle_seconds)
    rss_before, parts_before = resident_mb(service.process.pid), resident_parts_mb(service.process.pid)

    load, acknowledged, deleted, keys = Load(), set(), set(), threading.Lock()
    numbers = iter(range(10**9))

    def enroll_stream():
        def new_pictures():
            while not load.stop.is_set():
                number = next(numbers)
                yield pb.EnrollRequest(key=f"soak/{number}", image=mosaic(100_000 + number))

        for result in stub.Enroll(new_pictures(), timeout=minutes * 60 + 300):
            if result.status == pb.EnrollResult.ENROLLED:
                with keys:
                    acknowledged.add(result.key)

    def slow_check_stream():
        def slowly():
            while not load.stop.is_set():
                time.sleep(1)
                yield pb.CheckRequest(image=random.choice(copies))

        for _ in stub.CheckStream(slowly(), timeout=minutes * 60 + 300):
            time.sleep(2)

    def delete_one():
        time.sleep(1)
        with keys:
            left = sorted(acknowledged - deleted)
        if left:
            key = random.choice(left)
            stub.Delete(pb.DeleteRequest(key=key), timeout=60)
            with keys:
                deleted.add(key)

    def rebuild():
        if load.stop.wait(60):
            return
        command = [sys.executable, "-m", "service.cli", "index", "rebuild", "--quiet", "--data-dir"]
        subprocess.run([*command, str(folder / "data")], check=True, capture_output=True, timeout=600)

    big = oversized_jpeg()
    stranger = pb_grpc.NearDupStub(channel(address, Credentials()))
    junk = pb.CheckRequest(image=b"\xff\xd8\xff" + bytes(8 << 20))
    load.run("Enroll stream", enroll_stream)
    load.run("slow CheckStream", slow_check_stream)
    load.run("Delete", delete_one)
    load.run("index rebuild", rebuild)
    load.run("oversized Checks (36 Mpx)", lambda: stub.Check(pb.CheckRequest(image=big), timeout=120))
    for _ in range(UNAUTHENTICATED_CALLERS):
        load.run("unauthenticated 8 MB Checks", lambda: stranger.Check(junk, timeout=30))

    peak = rss_before
    watching = threading.Event()

    def watch_memory():
        nonlocal peak
        while not watching.is_set():
            peak = max(peak, resident_mb(service.process.pid))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    started = time.monotonic()
    cpu_before = cpu_by_process(service.process.pid)
    busy = timed_checks(stub, copies, lambda: time.monotonic() - started > minutes * 60)
    cpu_during_load = {name: spent - cpu_before[name] for name, spent in cpu_by_process(service.process.pid).items()}
    load.join()
    time.sleep(10)
    watching.set()
    watcher.join()
    rss_after, parts_after = resident_mb(service.process.pid), resident_parts_mb(service.process.pid)
    kept_mb = metric(service.metrics_port, "neardup_verification_kept_bytes") / 2**20
    service.stop()

    restarted = RunningService(folder / "data", *flags, credentials=Credentials(token=token)).wait_serving()
    try:
        records = restarted.stub.Stats(pb.StatsRequest(), timeout=30).records
    finally:
        restarted.stop()
    expected = enrolled_first + len(acknowledged - deleted)
    return {
        "minutes": minutes,
        "check_ms": {
            "idle": {"p50": percentile(idle, 0.5), "p99": percentile(idle, 0.99), "count": len(idle)},
            "under_load": {"p50": percentile(busy, 0.5), "p99": percentile(busy, 0.99), "count": len(busy)},
        },
        "p99_ratio": percentile(busy, 0.99) / percentile(idle, 0.99),
        "enrolments_acknowledged": len(acknowledged),
        "deleted": len(deleted),
        "records_lost_after_restart": max(0, expected - records),
        "rss_mb": {"before": rss_before, "peak": peak, "after": rss_after},
        "rss_after_ratio": rss_after / rss_before,
        "rss_parts_mb": {"before": parts_before, "after": parts_after},
        "verification_kept_mb_after": kept_mb,
        "cpu_s_during_load": cpu_during_load,
        "calls": {name: dict(codes) for name, codes in load.codes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the mixed load runs")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="how long Checks are timed alone first")
    parser.add_argument("--images", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "images")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = soak(arguments.images, arguments.minutes, arguments.idle_seconds, Path(folder))
    idle, busy = report["check_ms"]["idle"], report["check_ms"]["under_load"]
    print(f"interactive Check, ms: idle p50 {idle['p50']:.0f}, p99 {idle['p99']:.0f} ({idle['count']} Checks); "
          f"under load p50 {busy['p50']:.0f}, p99 {busy['p99']:.0f} ({busy['count']}): "
          f"p99 {report['p99_ratio']:.2f}x idle")  # fmt: skip
    print(f"enrolments acknowledged {report['enrolments_acknowledged']}, deleted {report['deleted']}, "
          f"lost after a restart {report['records_lost_after_restart']}")  # fmt: skip
    rss = report["rss_mb"]
    print(f"front service RSS, MB: before {rss['before']:.0f}, peak {rss['peak']:.0f}, after {rss['after']:.0f} "
          f"({report['rss_after_ratio']:.2f}x before)")  # fmt: skip
    parts = report["rss_parts_mb"]
    print("  by kind, before -> after: " + ", ".join(
        f"{kind} {parts['before'][kind]:.0f} -> {parts['after'][kind]:.0f}" for kind in parts["before"]))  # fmt: skip
    print(f"  of which verification's kept candidates after: {report['verification_kept_mb_after']:.0f} MB")
    print(f"CPU seconds during the {report['minutes'] * 60:.0f} s of load ({os.cpu_count()} cores): " + ", ".join(
        f"{name} {spent:.0f}" for name, spent in report["cpu_s_during_load"].items()))  # fmt: skip
    for name, codes in report["calls"].items():
        print(f"  {name}: " + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())))
    if arguments.out:
        arguments.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
