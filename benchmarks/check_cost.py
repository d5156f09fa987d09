"""What a Check, an Enroll item and FindDuplicates cost beside a Hash of the same image, and where a
Check's time goes stage by stage, on the catalogue benchmark's records and queries (real pictures
through the real decision), one request at a time; side by side with other checkouts of the code.

  python -m benchmarks.check_cost --catalogue ../shared/data/clipart --twin-share 0.3 --queries 300 \\
      [--beside DIR ...] [--service-flags "..."]

For each code (this checkout, then each DIR, whose service runs from that folder): a fresh service,
the benchmark's pictures enrolled in one stream (timed) and Hashed one at a time (the same bytes),
the index rebuilt by that code's `neardup index rebuild`; then the sampled queries one at a time,
each code in turn for each query, a Hash then a Check of the same bytes; then FindDuplicates over
every record. Prints per code: a Check's mean time over a Hash's, an enrolled image's over a
Hash's, FindDuplicates' records per second, and, from Stats.stages (a code that has them), each
stage's share of the Checks and its mean time per Check that ran it.
"""

import argparse
import random
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.evaluate import add_benchmark_arguments, benchmark_of, image_data
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    code: Path
    service: RunningService | None = None
    hash_s: list[float] = field(default_factory=list)  # the queries'
    check_s: list[float] = field(default_factory=list)
    enrol_s: float = 0.0  # the whole stream
    enrolled_hash_s: float = 0.0  # the same images Hashed one at a time
    groups_s: float = 0.0
    records: int = 0
    stages: list = field(default_factory=list)

    def hash_and_check(self, data: bytes) -> None:
        stub = self.service.stub
        self.hash_s.append(timed(lambda: stub.Hash(pb.HashRequest(image=data), timeout=120)))
        self.check_s.append(timed(lambda: stub.Check(pb.CheckRequest(image=data), timeout=120)))


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def started(code: Path, data_dir: Path, flags: list[str]) -> RunningService:
    return RunningService(data_dir, *flags, cwd=code).wait_serving()


def enrolled(measured: Measured, enrol: dict, data_dir: Path, flags: list[str]) -> None:
    """The pictures enrolled and Hashed, the index rebuilt by that code, the service started again."""
    service = started(measured.code, data_dir, flags)
    items = [(key, image_data(source)) for key, source in enrol.items()]
    requests = (pb.EnrollRequest(key=key, image=data) for key, data in items)
    measured.enrol_s = timed(lambda: list(service.stub.Enroll(requests, timeout=7200)))
    measured.enrolled_hash_s = sum(
        timed(lambda data=data: service.stub.Hash(pb.HashRequest(image=data), timeout=60)) for _, data in items
    )
    measured.records = len(items)
    service.stop()
    rebuild = [sys.executable, "-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir)]
    subprocess.run(rebuild, cwd=measured.code, check=True, capture_output=True)
    measured.service = started(measured.code, data_dir, flags)


def accepted(service: RunningService, data: bytes) -> bool:
    """Does the service take the image at all (a transform can leave fewer pixels than it accepts)?"""
    try:
        service.stub.Hash(pb.HashRequest(image=data), timeout=120)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        return False
    return True


def find_duplicates(measured: Measured) -> None:
    stub = measured.service.stub
    measured.groups_s = timed(lambda: list(stub.FindDuplicates(pb.FindDuplicatesRequest(), timeout=7200)))


def report(measured: Measured) -> str:
    hash_ms, check_ms = (1000 * sum(values) / len(values) for values in (measured.hash_s, measured.check_s))
    enrol_ms, image_ms = (1000 * seconds / measured.records for seconds in (measured.enrol_s, measured.enrolled_hash_s))
    lines = [
        f"{measured.code}:",
        f"  Check {check_ms:.1f} ms / Hash {hash_ms:.1f} ms = {check_ms / hash_ms:.2f}x "
        f"(mean over {len(measured.check_s)} queries)",
        f"  Enroll {enrol_ms:.1f} ms per image (one stream) / Hash {image_ms:.1f} ms = {enrol_ms / image_ms:.2f}x",
        f"  FindDuplicates {measured.records / measured.groups_s:.1f} records/s "
        f"({measured.records} records, {measured.groups_s:.0f} s)",
    ]
    checks = next((stage.runs for stage in measured.stages if stage.name == "identical"), 0)
    if not measured.stages:
        lines.append("  (no per-stage figures: this code has no Stats.stages)")
    for stage in measured.stages:
        share = stage.runs / checks if checks else 0.0
        mean = 1000 * stage.seconds / stage.runs if stage.runs else 0.0
        decided = stage.duplicates + stage.not_duplicates + stage.identical
        lines.append(
            f"  {stage.name:16s} reached by {share:6.1%} of Checks, {mean:7.1f} ms each, "
            f"{1000 * stage.seconds / max(checks, 1):6.1f} ms per Check; decided {decided}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(parser)
    parser.add_argument("--queries", type=int, default=300, help="queries sampled (seeded)")
    parser.add_argument("--beside", type=Path, action="append", default=[], help="another checkout to measure too")
    parser.add_argument("--service-flags", default="", help="extra flags for every `neardup serve`")
    arguments = parser.parse_args()
    benchmark = benchmark_of(arguments)
    queries = random.Random(arguments.seed).sample(benchmark.queries, min(arguments.queries, len(benchmark.queries)))
    flags = shlex.split(arguments.service_flags)
    codes = [Measured(ROOT), *(Measured(code.resolve()) for code in arguments.beside)]
    with tempfile.TemporaryDirectory(prefix="neardup-cost-") as work:
        try:
            for number, measured in enumerate(codes):
                enrolled(measured, benchmark.enrol, Path(work) / f"data-{number}", flags)
            for query in queries:
                if not accepted(codes[0].service, query.data):
                    continue
                for measured in codes:
                    measured.hash_and_check(query.data)
            for measured in codes:
                measured.stages = list(measured.service.stub.Stats(pb.StatsRequest(), timeout=30).stages)
                find_duplicates(measured)
        finally:
            for measured in codes:
                if measured.service is not None:
                    measured.service.stop()
    for measured in codes:
        print(report(measured))


if __name__ == "__main__":
    main()
