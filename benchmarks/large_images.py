"""What a burst of large images costs the front service's memory, and whether it is given back.

  python -m benchmarks.large_images [--callers 6] [--seconds 40] [--width 6300] [--height 4700] [--code DIR]

Starts `neardup serve` (the bundled Triton, the default decode budget; the code of `--code`, another
checkout, to compare), enrols every other committed test picture, then has each caller Check a
PNG of its own (one of the other pictures enlarged to the size asked: a real picture's detail,
matching nothing enrolled, so that each Check goes on to verification and the regions) one after
the other for `--seconds`. Prints the Checks answered
by status, and the front service's resident memory (from /proc; the bundled Triton's processes are
not counted) before the burst, at its peak and 10 s after (docs/operations.md, "Memory after a
burst").
"""

import argparse
import io
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.service_process import RunningService, peak_resident_mb, reset_peak_resident, resident_mb

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "images"


def large_png(path: Path, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR).save(out, "PNG", compress_level=1)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--width", type=int, default=6300)
    parser.add_argument("--height", type=int, default=4700)
    parser.add_argument("--code", type=Path, default=None, help="the checkout whose service runs (default: this one)")
    arguments = parser.parse_args()
    files = sorted(IMAGES.glob("*.jpg"))
    enrolled, others = files[::2], files[1::2]
    pictures = [
        large_png(others[n % len(others)], (arguments.width, arguments.height)) for n in range(arguments.callers)
    ]
    print(f"{arguments.callers} PNGs of {arguments.width}x{arguments.height}, {min(map(len, pictures)) / 1e6:.1f}-"
          f"{max(map(len, pictures)) / 1e6:.1f} MB", flush=True)  # fmt: skip
    answered: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="neardup-large-") as work:
        service = RunningService(Path(work) / "data", cwd=arguments.code).wait_serving()
        try:
            requests = (pb.EnrollRequest(key=path.name, image=path.read_bytes()) for path in enrolled)
            list(service.stub.Enroll(requests, timeout=600))
            pid = service.process.pid
            reset_peak_resident(pid)
            before = resident_mb(pid)
            deadline = time.monotonic() + arguments.seconds

            def caller(picture: bytes) -> None:
                while time.monotonic() < deadline:
                    try:
                        service.stub.Check(pb.CheckRequest(image=picture), timeout=120)
                        answered["OK"] += 1
                    except grpc.RpcError as error:
                        answered[error.code().name] += 1

            callers = [threading.Thread(target=caller, args=(picture,)) for picture in pictures]
            for thread in callers:
                thread.start()
            for thread in callers:
                thread.join()
            peak = peak_resident_mb(pid)
            time.sleep(10)
            after = resident_mb(pid)
        finally:
            service.stop()
    print(f"Checks answered in {arguments.seconds:.0f} s: {dict(answered)}")
    print(f"front service resident memory, MB: before {before:.0f}, peak {peak:.0f}, 10 s after {after:.0f}")


if __name__ == "__main__":
    main()
