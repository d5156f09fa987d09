"""Checks per second of pictures that match nothing, under many concurrent clients (the worst case:
every Check goes on to the regions), beside the model's own images per second in process at the
same input size; side by side with other checkouts, in one run.

  python -m benchmarks.no_match --catalogue ../shared/data/clipart [--enrolled 500] [--clients 16] \\
      [--checks 160] [--beside DIR ...]

Enrols `--enrolled` drawings of the clipart catalogue into a fresh service of each code (this
checkout, then each DIR, whose service runs from that folder), and sends the dev images (photographs,
none of them a drawing of the catalogue) as Checks from `--clients` callers, each on its own
connection, `--checks` in all, after one Check of each to warm up. Prints per code the Checks per
second, the p50 and p99 latency, how many of the Checks were duplicates (none expected) and the
share that reached the region stage (Stats.stages), and their ratio to the model's in-process rate
(ONNX Runtime, batches of 16, measured first on the same machine).
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench import DEFAULT_IMAGES, MAX_IMAGE_PIXELS, SETTINGS, check_load, client_stubs, model_limit
from service.media.imaging import Limits, decode_canvas
from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent


def drawings(catalogue: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` catalogue drawings, one per group, in manifest order."""
    seen, chosen = set(), []
    for entry in json.loads((catalogue / "manifest.json").read_text()):
        if entry["group"] not in seen and len(chosen) < count:
            seen.add(entry["group"])
            chosen.append((f"catalogue/{entry['file']}", (catalogue / entry["file"]).read_bytes()))
    return chosen


def measured(
    code: Path, data_dir: Path, enrolled: list, queries: list[bytes], clients: int, checks: int
) -> tuple[str, float]:
    service = RunningService(data_dir, "--max-concurrent-calls", "256", cwd=code).wait_serving()
    try:
        list(service.stub.Enroll((pb.EnrollRequest(key=key, image=data) for key, data in enrolled), timeout=3600))
        duplicates = sum(service.stub.Check(pb.CheckRequest(image=data), timeout=120).is_duplicate for data in queries)
        before = {stage.name: stage.runs for stage in service.stub.Stats(pb.StatsRequest(), timeout=30).stages}
        rate, latencies = check_load(client_stubs(service.port, clients), queries, checks)
        after = {stage.name: stage.runs for stage in service.stub.Stats(pb.StatsRequest(), timeout=30).stages}
    finally:
        service.stop()
    regions = (after.get("regions", 0) - before.get("regions", 0)) / checks
    p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
    return (
        f"{rate:.2f} Checks/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms; {duplicates} of the {len(queries)} pictures "
        f"a duplicate; {regions:.0%} of the Checks reached the regions"
    ), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, required=True, help="the clipart set: what is enrolled")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="the pictures checked")
    parser.add_argument("--enrolled", type=int, default=500)
    parser.add_argument("--queries", type=int, default=40, help="distinct pictures checked")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--checks", type=int, default=160)
    parser.add_argument("--beside", type=Path, action="append", default=[], help="another checkout to measure too")
    arguments = parser.parse_args()
    queries = [path.read_bytes() for path in sorted(arguments.images.glob("*.jpg"))[: arguments.queries]]
    limits = Limits(MAX_IMAGE_PIXELS, min_side=1)
    canvases = np.stack([decode_canvas(data, SETTINGS.canvas_size, limits) for data in queries[:16]])
    model = model_limit(canvases, 10)
    enrolled = drawings(arguments.catalogue, arguments.enrolled)
    with tempfile.TemporaryDirectory(prefix="neardup-no-match-") as work:
        for number, code in enumerate([ROOT, *(path.resolve() for path in arguments.beside)]):
            data_dir = Path(work) / f"data-{number}"
            line, rate = measured(code, data_dir, enrolled, queries, arguments.clients, arguments.checks)
            print(f"{code}: {arguments.clients} clients, {line}; {rate / model:.3f} of the model's {model:.1f} img/s")


if __name__ == "__main__":
    main()
