"""What small views cost, side by side with what they are added to, in one run.

  python -m benchmarks.small_views [--records 200000] [--queries 200] [--images DIR]

Enrols the images of `--images` (tests/images by default) through two fresh services, with small
views and without (--small-view-side 0), and prints both Enroll rates. Then builds a store of
`--records` random unit features, each with a small view, and an i8 snapshot of it, and measures
for that store: reading every small view into memory at start-up (SmallViews.catch_up) against
loading the snapshot (SnapshotLoader: checksum, then memory-mapped); the memory each takes; and a
thumbnail's second search (SmallViews.nearest, every distance) against a Check's first one
(UsearchIndex.nearest, k=8). Prints the figures and the ratios (docs/performance.md).
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.records import Enrolment
from service.storage.small_views import SmallViews
from service.storage.snapshots import SnapshotLoader, build_snapshot, bytes_on_disk
from service.storage.store import Store
from service.storage.usearch_index import SNAPSHOT_DTYPE, UsearchIndex
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sscd@224"
K = 8
BATCH = 10_000


def features(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 512)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill(store: Store, count: int, rng: np.random.Generator) -> None:
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        plain, small = features(rng, size), features(rng, size)
        batch = [
            Enrolment(
                f"k{start + i}", hashlib.sha256(b"%d" % (start + i)).digest(), plain[i], 0.3, {}, small_view=small[i]
            )
            for i in range(size)
        ]
        store.enroll(MODEL, batch)


def enroll_rate(images: list[bytes], *flags: str) -> float:
    """Images per second of one Enroll stream into a fresh service (after a warm-up image)."""
    with tempfile.TemporaryDirectory() as folder:
        service = RunningService(Path(folder) / "data", *flags).wait_serving()
        try:
            list(service.stub.Enroll(iter([pb.EnrollRequest(key="warm-up", image=images[0])]), timeout=60))
            requests = (pb.EnrollRequest(key=f"k{i}", image=data) for i, data in enumerate(images))
            started = time.perf_counter()
            results = list(service.stub.Enroll(requests, timeout=1800))
            return len(results) / (time.perf_counter() - started)
        finally:
            service.stop()


def per_query_ms(search, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for query in queries:
        search(query)
    return 1000 * (time.perf_counter() - started) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--images", type=Path, default=ROOT / "tests" / "images", help="images to enrol (jpg, png)")
    arguments = parser.parse_args()
    images = [path.read_bytes() for path in sorted(arguments.images.iterdir()) if path.suffix in (".jpg", ".png")]
    with_views, without = enroll_rate(images), enroll_rate(images, "--small-view-side", "0")
    print(f"Enroll, {len(images)} images: {with_views:.1f} img/s with small views, {without:.1f} without "
          f"({with_views / without:.2f}x)")  # fmt: skip
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        store = Store(data_dir)
        started = time.perf_counter()
        fill(store, arguments.records, rng)
        print(f"{arguments.records:,} records with small views written in {time.perf_counter() - started:.0f} s")
        build_snapshot(store, data_dir / "index", SNAPSHOT_DTYPE, keep=1, progress=False)

        index = UsearchIndex(store)
        started = time.perf_counter()
        SnapshotLoader(index, data_dir / "index").load_if_new()
        index.apply_changes()
        snapshot_s = time.perf_counter() - started
        small_views = SmallViews(store)
        started = time.perf_counter()
        small_views.catch_up()
        small_s = time.perf_counter() - started

        queries = features(rng, arguments.queries)
        index_ms = per_query_ms(lambda query: index.nearest(query, K), queries)
        small_ms = per_query_ms(lambda query: small_views.nearest(query, K), queries)
        small_bytes = small_views.vectors[: len(small_views)].nbytes
        print(f"start-up: snapshot loaded in {snapshot_s:.2f} s, small views read in {small_s:.2f} s "
              f"({small_s / snapshot_s:.1f}x)")  # fmt: skip
        print(f"memory: snapshot file {bytes_on_disk(data_dir / 'index') / 1e6:.0f} MB (mapped), small views "
              f"{small_bytes / 1e6:.0f} MB (held)")  # fmt: skip
        print(f"search, k={K}: index {index_ms:.2f} ms, small views {small_ms:.2f} ms ({small_ms / index_ms:.1f}x)")
        store.close()


if __name__ == "__main__":
    main()
