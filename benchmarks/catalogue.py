"""Collections and duplicate groups at scale, measured side by side in one run.

  python -m benchmarks.catalogue [--records 1000000] [--collections 1000] [--queries 300]
                                 [--group-records 100000]

1. Filtered search: a store of `--records` synthetic features (shaped like real SSCD features,
   as in benchmarks/bench.py) spread over `--collections` collections, an i8 snapshot of it, and
   UsearchIndex.nearest (k=8, what a Check asks) for copies of stored vectors: unfiltered, limited
   to the query's collection (1,000 records: exact distances), and limited to 100 collections
   (100k records: the graph, asked for more while other collections crowd the answer). Latency
   p50/p99 and recall@1 against exact search within the same records.
2. FindDuplicates: a store of `--group-records` features of which 5 % have a planted near-copy
   (cosine ~0.97), its snapshot, and core/grouping.find_groups at a full core; the time, and the
   planted pairs found against the pairs reported.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench import DEFAULT_IMAGES, features, load_images, percentile, synthetic_vectors
from service.config import Settings
from service.core.decision import Policy
from service.core.grouping import Group, find_groups
from service.core.searches import decided
from service.storage.records import Enrolment
from service.storage.snapshots import SnapshotLoader, build_snapshot
from service.storage.store import Store
from service.storage.usearch_index import SNAPSHOT_DTYPE, UsearchIndex

MODEL = Settings().model_identity
K = 8


def fill(data_dir: Path, vectors: np.ndarray, collections: list[str]) -> UsearchIndex:
    store = Store(data_dir)
    for start in range(0, len(vectors), 2000):
        store.enroll(MODEL, [
            Enrolment(f"r/{i}", i.to_bytes(32, "big"), vectors[i], 0.0, {}, collection=collections[i])
            for i in range(start, min(start + 2000, len(vectors)))
        ])  # fmt: skip
    started = time.perf_counter()
    build_snapshot(store, data_dir / "index", SNAPSHOT_DTYPE, keep=1, progress=False)
    print(f"  snapshot of {len(vectors)} records built in {time.perf_counter() - started:.0f} s", flush=True)
    index = UsearchIndex(store)
    SnapshotLoader(index, data_dir / "index").load_if_new()
    index.apply_changes()
    return index


def copies(vectors: np.ndarray, picked: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Stored vectors moved a little, as a copy's feature is."""
    moved = vectors[picked] + rng.normal(0, noise / np.sqrt(512), (len(picked), 512)).astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def filtered_search(centres: np.ndarray, arguments) -> None:
    rng = np.random.default_rng(3)
    count, groups = arguments.records, arguments.collections
    print(f"filtered search: {count} records in {groups} collections", flush=True)
    vectors = synthetic_vectors(centres, count, rng)
    stored = vectors.astype(np.float16).astype(np.float32)  # what the store keeps
    placed = rng.integers(0, groups, count)
    names = [f"c{n}" for n in placed]
    with tempfile.TemporaryDirectory(prefix="neardup-collections-") as work:
        index = fill(Path(work), vectors, names)
        picked = rng.choice(count, arguments.queries, replace=False)
        queries = copies(vectors, picked, rng, noise=0.6)
        cases = {
            "unfiltered": lambda n: None,
            "1 collection (exact distances)": lambda n: frozenset([names[picked[n]]]),
            **{
                f"{size} collections (graph, over-fetch)": lambda n, size=size: frozenset(
                    f"c{(placed[picked[n]] + step) % groups}" for step in range(size)
                )
                for size in (10, 100)
            },
        }
        for case, wanted_of in cases.items():
            latencies, hits = [], 0
            for n, query in enumerate(queries):
                wanted = wanted_of(n)
                if wanted is None:
                    truth = int(np.argmax(stored @ query))
                else:
                    members = np.flatnonzero(np.isin(placed, [int(name[1:]) for name in wanted]))
                    truth = members[np.argmax(stored[members] @ query)]
                started = time.perf_counter()
                found = index.nearest(query, K, wanted)
                latencies.append(time.perf_counter() - started)
                hits += bool(found) and found[0][0].key == f"r/{truth}"
            p50, p99 = (1000 * percentile(latencies, q) for q in (50, 99))
            print(f"  {case:<38} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  recall@1 {hits / len(queries):.3f}", flush=True)


def duplicate_groups(centres: np.ndarray, arguments) -> None:
    rng = np.random.default_rng(4)
    count = arguments.group_records
    planted = count // 20
    print(f"FindDuplicates: {count} records, {planted} of them near-copies of others", flush=True)
    originals = synthetic_vectors(centres, count - planted, rng)
    sources = rng.choice(len(originals), planted, replace=False)
    vectors = np.concatenate([originals, copies(originals, sources, rng, noise=0.25)])
    with tempfile.TemporaryDirectory(prefix="neardup-groups-") as work:
        index = fill(Path(work), vectors, [""] * count)
        policy = Policy()

        def decide(record, nearest):  # the rule alone: synthetic features have no pictures to verify
            return decided(nearest, lambda collection: policy, 0.0)

        async def run() -> list[Group]:
            return [
                item async for item in find_groups(index.store, index, decide, None, 1.0) if isinstance(item, Group)
            ]

        started = time.perf_counter()
        groups = asyncio.run(run())
        seconds = time.perf_counter() - started
    expected = {frozenset([f"r/{source}", f"r/{len(originals) + n}"]) for n, source in enumerate(sources)}
    reported = {frozenset([a, b]) for group in groups for a in group.names for b in group.names if a < b}
    reported = {frozenset(key for _, key in pair) for pair in reported}
    found = len(expected & reported)
    others = len(reported - expected)
    print(f"  {seconds:.0f} s at one full core ({count / seconds:.0f} records/s); planted pairs found "
          f"{found}/{len(expected)} ({found / len(expected):.3f}); other pairs reported {others}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--collections", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--group-records", type=int, default=100_000)
    arguments = parser.parse_args()
    centres = features(load_images(arguments.images, 300))
    duplicate_groups(centres, arguments)
    filtered_search(centres, arguments)


if __name__ == "__main__":
    main()
