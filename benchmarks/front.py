"""Check throughput of the front service with 1 and 2 workers, on usearch and on Milvus Lite,
side by side in one run.

  python -m benchmarks.front [--images DIR] [--enrolled 300] [--requests 1500] [--clients 8]

Two kinds of Check load: byte-identical requests (answered from the digest, no Triton: what the
front process alone costs, gRPC and the lookup) and decoded requests (re-encoded copies: decode,
Triton with the distilled model, search, decision). Each configuration is a fresh service on the
same enrolled images; prints Checks/s and p99 per configuration, then the ratios 2 workers / 1
worker and milvus / usearch. Milvus Lite is a single-process Python engine (on the same cores):
its figures, over fewer Checks (--milvus-requests), say that the backend works under load, not
how fast a Milvus cluster is.
"""

import argparse
import io
import tempfile
import urllib.request
from pathlib import Path

from PIL import Image

from benchmarks.bench import check_load, client_stubs, load_images, percentile
from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.service_process import MilvusLite, RunningService, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "dev-images"
FLAGS = ("--model", "sscd_distilled", "--max-concurrent-calls", "256")


def reencoded(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue()


def measure(flags: tuple[str, ...], data_dir: Path, images: list[bytes], clients: int, count: int) -> dict:
    service = RunningService(data_dir, *FLAGS, *flags).wait_serving()
    try:
        if "--workers" in flags:  # every worker up before the load starts
            wait_for(lambda: all(_answers(service.metrics_port + n) for n in range(2)), 120, "both workers")
        requests = (pb.EnrollRequest(key=f"bench/{n}", image=image) for n, image in enumerate(images))
        assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(requests, timeout=600))
        copies = [reencoded(image) for image in images]
        figures = {}
        for kind, queries in (("identical", images), ("decoded", copies)):
            stubs = client_stubs(service.port, clients)
            check_load(stubs, queries, clients * 4)  # warm-up
            rate, latencies = check_load(stubs, queries, count)
            figures[kind] = (rate, 1000 * percentile(latencies, 99))
        return figures
    finally:
        service.stop()


def _answers(metrics_port: int) -> bool:
    return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.exists() else ROOT / "tests/images"
    )
    parser.add_argument("--enrolled", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1500, help="Checks per measurement")
    parser.add_argument("--milvus-requests", type=int, default=300, help="on Milvus Lite (slower: a Python engine)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers, each on its own connection")
    arguments = parser.parse_args()
    images = load_images(arguments.images, arguments.enrolled)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="neardup-front-") as work:
        milvus = MilvusLite(Path(work) / "milvus").start()
        try:
            for backend in ("usearch", "milvus"):
                for workers in (1, 2):
                    name = f"{backend}, {workers} worker{'s' if workers > 1 else ''}"
                    flags: tuple[str, ...] = ("--workers", "2") if workers == 2 else ()
                    count = arguments.requests
                    if backend == "milvus":
                        flags += ("--index-backend", "milvus", "--milvus-uri", milvus.uri)
                        flags += ("--milvus-collection", f"front_{workers}")
                        count = arguments.milvus_requests
                    folder = Path(work) / name.replace(", ", "-").replace(" ", "")
                    results[name] = measure(flags, folder, images, arguments.clients, count)
                    for kind, (rate, p99) in results[name].items():
                        print(f"{name:<22} {kind:<9} {rate:7.1f} Checks/s  p99 {p99:7.1f} ms", flush=True)
        finally:
            milvus.stop()
    print("ratios:")
    for kind in ("identical", "decoded"):
        for backend in ("usearch", "milvus"):
            two, one = results[f"{backend}, 2 workers"][kind][0], results[f"{backend}, 1 worker"][kind][0]
            print(f"  {kind:<9} {backend}: 2 workers / 1 worker = {two / one:.2f}x")
        for workers in ("1 worker", "2 workers"):
            ratio = results[f"milvus, {workers}"][kind][0] / results[f"usearch, {workers}"][kind][0]
            print(f"  {kind:<9} {workers}: milvus / usearch = {ratio:.2f}x")


if __name__ == "__main__":
    main()
