"""Search after deletions since the last snapshot, against a fresh snapshot, side by side in one run.

  python -m benchmarks.live_part [--records 200000] [--deletions 5000] [--queries 2000]

Builds a store of random unit features, an i8 snapshot of it, and measures UsearchIndex.nearest
(k=8, what a Check asks: the graph search and the exact re-ranking from the store) on a fresh
snapshot, then after `--deletions` deletions made since it; and the graph search alone, as the
service does it now (filtered, deepened only while deleted ids crowd the answer) and as it did
before (ask the graph for k + every deleted id). Prints the latencies and the ratios.
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from service.storage.records import Enrolment
from service.storage.snapshots import SnapshotLoader, build_snapshot
from service.storage.store import Store
from service.storage.usearch_index import (
    EXTRA_CANDIDATES,
    SNAPSHOT_DTYPE,
    UsearchIndex,
    search_without,
)

MODEL = "sscd@224"
K = 8


def features(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 512)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill(store: Store, count: int, rng: np.random.Generator) -> None:
    for start in range(0, count, 5000):
        batch = features(rng, min(5000, count - start))
        store.enroll(
            MODEL,
            [
                Enrolment(f"r{start + i}", hashlib.sha256(f"r{start + i}".encode()).digest(), f, 0.25, {})
                for i, f in enumerate(batch)
            ],
        )


def timed(search, queries: np.ndarray) -> tuple[float, float]:
    """Median and p99 milliseconds per query."""
    seconds = []
    for query in queries:
        started = time.perf_counter()
        search(query)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--deletions", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=2_000)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory))
        fill(store, arguments.records, rng)
        build_snapshot(store, Path(directory) / "index", SNAPSHOT_DTYPE, keep=1, progress=False)
        index = UsearchIndex(store)
        store.subscribe(index.apply_changes)
        SnapshotLoader(index, Path(directory) / "index").load_if_new()
        # Queries near stored records, as a Check of a copy would be.
        with store.read() as view:
            stored = [view.by_key(f"r{i}").feature.astype(np.float32) for i in rng.choice(arguments.records, 500)]
        queries = np.array(
            [(f + 0.3 * n) / np.linalg.norm(f + 0.3 * n) for f, n in zip(stored, features(rng, 500), strict=True)]
        )
        queries = np.resize(queries, (arguments.queries, 512))

        def nearest(query):
            return index.nearest(query, K)

        def graph_only(query):  # the snapshot search alone, as the service does it
            return search_without(index.snapshot, query, K + EXTRA_CANDIDATES, index.live.removed)

        def graph_only_before(query):  # what the service did before: ask for k + every deleted id
            return index.snapshot.search(query, K + EXTRA_CANDIDATES + len(index.live.removed))

        paths = {"Check's nearest()": nearest, "graph search": graph_only, "graph search, before": graph_only_before}
        timed(nearest, queries[:200])  # warm-up
        fresh = {name: timed(path, queries) for name, path in paths.items()}
        for i in rng.choice(arguments.records, arguments.deletions, replace=False):
            store.delete(f"r{i}")
        after = {name: timed(path, queries) for name, path in paths.items()}
        print(f"{arguments.records} records, i8 snapshot, {arguments.deletions} deleted since it, k={K}")
        print(f"{'':24s}{'fresh median / p99 ms':>24s}{'after median / p99 ms':>24s}{'after / fresh':>15s}")
        for name in paths:
            (m0, p0), (m1, p1) = fresh[name], after[name]
            print(f"{name:24s}{m0:14.3f} / {p0:6.3f}{m1:14.3f} / {p1:6.3f}{m1 / m0:14.2f}x")
        store.close()


if __name__ == "__main__":
    main()
