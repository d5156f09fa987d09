"""Recall against latency for other HNSW parameters than the service's, on the benchmark's data.

  python -m benchmarks.hnsw_frontier [--connectivity N] [--expansion-add N] [--size 1000000]

Builds one index of the snapshot's storage type (i8) over the synthetic vectors of
benchmarks/bench.py with the given graph parameters (8-10 minutes at 1M on 2 cores for
connectivity 32-48, twice that with expansion-add 128) and prints, for search expansions from
64 to 256, p50 and p99 latency, recall@1 against exact search and the distances computed per
query; then every distance (what a snapshot of at most EXACT_RECORDS gets) beside the graph, as a
ratio (`--size 5000`). The service's parameters are in service/storage/usearch_index.py.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401 - loaded before usearch, as benchmarks.bench does
from usearch.index import Index

from benchmarks import bench
from service.storage.usearch_index import (
    CONNECTIVITY,
    DIMENSIONS,
    EXPANSION_ADD,
    EXPANSION_SEARCH,
    METRIC,
    SNAPSHOT_DTYPE,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=bench.DEFAULT_IMAGES, help="real images for the vectors' shape")
    parser.add_argument("--connectivity", type=int, default=CONNECTIVITY)
    parser.add_argument("--expansion-add", type=int, default=EXPANSION_ADD)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    arguments = parser.parse_args()
    centres = bench.features(bench.load_images(arguments.images, 400))
    vectors, queries, truth = bench.search_data(centres, arguments.size, arguments.queries, np.random.default_rng(0))
    index = Index(
        ndim=DIMENSIONS,
        metric=METRIC,
        dtype=SNAPSHOT_DTYPE,
        connectivity=arguments.connectivity,
        expansion_add=arguments.expansion_add,
    )
    label = f"{arguments.size // 1000}k {SNAPSHOT_DTYPE} connectivity {arguments.connectivity}"
    label += f" expansion-add {arguments.expansion_add}"
    print(f"search ({label}; lines that name no expansion are at the service's, {EXPANSION_SEARCH})", flush=True)
    started = time.perf_counter()
    index.add(np.arange(arguments.size, dtype=np.uint64), vectors)
    bench.report("search", "add rate (vectors/s)", arguments.size / (time.perf_counter() - started), "vec/s")
    bench.measure_search(index, f"{arguments.size // 1000}k", vectors, queries, truth, (64, 96, 128, 160, 192, 256))
    measure_every_distance(index, f"{arguments.size // 1000}k", queries, truth)


def measure_every_distance(index: Index, label: str, queries: np.ndarray, truth: np.ndarray) -> None:
    """The search a snapshot of at most EXACT_RECORDS gets, beside the graph's at the service's
    expansion, query by query in turn."""
    index.expansion_search = EXPANSION_SEARCH
    graph, every, found = [], [], []
    for query in queries:
        started = time.perf_counter()
        index.search(query, 10)
        graph.append(time.perf_counter() - started)
        started = time.perf_counter()
        found.append(int(index.search(query, 10, exact=True).keys[0]))
        every.append(time.perf_counter() - started)
    bench.report("search", f"{label} every distance p50 (ms)", 1000 * bench.percentile(every, 50), "ms")
    bench.report("search", f"{label} every distance recall@1 vs exact", float(np.mean(np.asarray(found) == truth)), "")
    ratio = bench.percentile(every, 50) / bench.percentile(graph, 50)
    bench.report("search", f"{label} every distance / graph, p50", ratio, "x")


if __name__ == "__main__":
    main()
