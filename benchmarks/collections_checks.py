"""A Check limited to one collection beside an unfiltered one, through the real service, at many
collections; side by side with other checkouts of the code, in one run.

  python -m benchmarks.collections_checks [--collections 10000] [--queries 60] [--beside DIR ...]

Writes a store of one record in each of `--collections` collections (synthetic unit features, so
that no real picture is near any of them: every Check is one that matches nothing, and goes on to
the regions where boxes are pasted on it; nothing is verified, for want of a candidate near), then
starts each code's service on a copy of it (the time to SERVING is printed: start-up at many
collections) and Checks the committed test pictures one at a time, each code in turn: unfiltered,
then limited to the collection of one record. Prints each code's median and p99 of both, and the
filtered Check's median over the unfiltered one's.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import percentile
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.records import Enrolment
from service.storage.store import Store
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "images"
MODEL = "sscd@224"  # the default model's identity, as the service checks it
BATCH = 5_000


def filled(data_dir: Path, collections: int) -> None:
    rng = np.random.default_rng(5)
    store = Store(data_dir)
    for start in range(0, collections, BATCH):
        vectors = rng.normal(size=(min(BATCH, collections - start), 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.enroll(
            MODEL,
            [
                Enrolment(
                    f"r/{start + i}", (start + i).to_bytes(32, "big"), vector, 0.0, {}, collection=f"c{start + i}"
                )
                for i, vector in enumerate(vectors)
            ],
        )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=60, help="Checks of each kind per code")
    parser.add_argument("--beside", type=Path, action="append", default=[], help="another checkout to measure too")
    arguments = parser.parse_args()
    pictures = [path.read_bytes() for path in sorted(IMAGES.glob("*.jpg"))]
    codes = [ROOT, *(code.resolve() for code in arguments.beside)]
    timings = {code: {"unfiltered": [], "one collection": []} for code in codes}
    with tempfile.TemporaryDirectory(prefix="neardup-collections-") as work:
        filled(Path(work) / "data", arguments.collections)
        services = {}
        try:
            for number, code in enumerate(codes):
                data_dir = Path(work) / f"data-{number}"
                shutil.copytree(Path(work) / "data", data_dir)
                started = time.perf_counter()
                services[code] = RunningService(data_dir, cwd=code).wait_serving(timeout_s=1800)
                print(f"{code}: serving after {time.perf_counter() - started:.1f} s", flush=True)
            for n in range(arguments.queries):
                picture = pictures[n % len(pictures)]
                for kind, collections in (("unfiltered", []), ("one collection", [f"c{n}"])):
                    for code in codes:
                        request = pb.CheckRequest(image=picture, collections=collections)
                        started = time.perf_counter()
                        services[code].stub.Check(request, timeout=600)
                        timings[code][kind].append(time.perf_counter() - started)
        finally:
            for service in services.values():
                service.stop()
    for code in codes:
        medians = {kind: 1000 * percentile(values, 50) for kind, values in timings[code].items()}
        figures = ", ".join(
            f"{kind} p50 {medians[kind]:.1f} ms p99 {1000 * percentile(values, 99):.1f} ms"
            for kind, values in timings[code].items()
        )
        print(
            f"{code}: {figures}; one collection / unfiltered {medians['one collection'] / medians['unfiltered']:.2f}x"
        )


if __name__ == "__main__":
    main()
