"""Is an interactive Check served ahead of bulk work? Its latency idle and beside each bulk load.

  python -m benchmarks.interactive [--images tests/images] [--seconds 40] [--code DIR]

Starts `neardup serve` (the bundled Triton, the code of `--code`, another checkout, or this one),
enrols the folder's pictures, then times Checks of re-encoded copies one at a time (what a user
waits for), first alone and then beside each bulk load in turn, for --seconds each:
- one Enroll stream of new pictures, as fast as the service takes them;
- a loop of Hash(views=100) calls;
- another caller with 48 CheckStreams open, each sending a request a second and never reading.
Prints the interactive Check's p50 and p99 in each phase and their ratio to idle, and what the
bulk caller got done (enrolled images/s, also alone for ALONE_S before the Checks start; Hash
calls/s; Stats answered to the Check's caller), so that both sides of the trade show.
"""

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.soak import Load, percentile, timed_checks
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import mosaic, reencoded
from tools.service_process import RunningService

STREAMS = 48
ALONE_S = 10  # the Enroll stream's own pace, measured before the Checks start


def enroll_stream(stub, done: list[int], stop: threading.Event) -> None:
    numbers = iter(range(10**9))

    def requests():
        while not stop.is_set():
            number = next(numbers)
            yield pb.EnrollRequest(key=f"bulk/{number}", image=mosaic(10**6 + number, 256))

    for _ in stub.Enroll(requests(), timeout=3600):
        done[0] += 1


def unread_streams(address: str, stop: threading.Event) -> list[grpc.Future]:
    """STREAMS CheckStreams on one channel, each sending a request a second, whose answers are never read."""
    image = reencoded(mosaic(5))

    def requests():
        while not stop.is_set():
            yield pb.CheckRequest(image=image)
            time.sleep(1)

    # Its own connection (channels of one process otherwise share one): another caller, to the service.
    own_connection = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.NearDupStub(own_connection)
    return [stub.CheckStream(requests(), timeout=3600) for _ in range(STREAMS)]


def phase(stub, copies, seconds: float, load: Load | None = None) -> list[float]:
    started = time.monotonic()
    spent = timed_checks(stub, copies, lambda: time.monotonic() - started > seconds)
    if load is not None:
        load.join()
    return spent


def measure(images: Path, seconds: float, code: Path | None, folder: Path) -> dict:
    pictures = {path.name: path.read_bytes() for path in sorted(images.glob("*.jpg"))}
    copies = [reencoded(data) for data in pictures.values()]
    service = RunningService(folder / "data", cwd=code).wait_serving()
    stub, address = service.stub, f"127.0.0.1:{service.port}"
    list(stub.Enroll((pb.EnrollRequest(key=name, image=data) for name, data in pictures.items()), timeout=600))
    results, bulk = {}, {}
    try:
        results["idle"] = phase(stub, copies, seconds)

        done, stop = [0], threading.Event()
        thread = threading.Thread(target=enroll_stream, args=(stub, done, stop), daemon=True)
        thread.start()
        time.sleep(2)  # the stream under way
        first = done[0]
        time.sleep(ALONE_S)
        alone = (done[0] - first) / ALONE_S
        first = done[0]
        results["beside one Enroll stream"] = phase(stub, copies, seconds)
        beside = (done[0] - first) / seconds
        bulk["beside one Enroll stream"] = f"{beside:.1f} images/s enrolled ({alone:.1f} with no Check beside it)"
        stop.set()
        thread.join(120)

        load = Load()
        many_views = pb.HashRequest(image=copies[0], views=100)
        load.run("Hash(views=100)", lambda: stub.Hash(many_views, timeout=600))
        time.sleep(2)
        results["beside a Hash(views=100) loop"] = phase(stub, copies, seconds, load)
        bulk["beside a Hash(views=100) loop"] = f"{load.codes['Hash(views=100)']['OK'] / (seconds + 2):.2f} Hash/s"

        stop = threading.Event()
        streams = unread_streams(address, stop)
        time.sleep(2)
        results[f"beside {STREAMS} unread CheckStreams"] = phase(stub, copies, seconds)
        refused = sum(1 for _ in range(10) if _stats_refused(stub))
        bulk[f"beside {STREAMS} unread CheckStreams"] = f"{10 - refused}/10 Stats answered"
        stop.set()
        for call in streams:
            call.cancel()
    finally:
        service.stop()
    idle_p50, idle_p99 = percentile(results["idle"], 0.5), percentile(results["idle"], 0.99)
    return {
        name: {
            "checks": len(spent),
            "p50_ms": round(percentile(spent, 0.5), 1),
            "p99_ms": round(percentile(spent, 0.99), 1),
            "p50_vs_idle": round(percentile(spent, 0.5) / idle_p50, 2),
            "p99_vs_idle": round(percentile(spent, 0.99) / idle_p99, 2),
            "bulk": bulk.get(name, ""),
        }
        for name, spent in results.items()
    }


def _stats_refused(stub) -> bool:
    try:
        stub.Stats(pb.StatsRequest(), timeout=10)
    except grpc.RpcError:
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("tests/images"))
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--code", type=Path, default=None, help="the checkout whose service runs (default: this one)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(measure(arguments.images, arguments.seconds, arguments.code, Path(work)), indent=1))


if __name__ == "__main__":
    main()
