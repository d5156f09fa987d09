"""What do refused callers cost everyone else? Callers without a token sending large Checks, beside
an interactive Check of a caller with one.

  python -m benchmarks.refusals [--seconds 30] [--beside DIR]

Starts `neardup serve` with a token file (the bundled Triton), enrols the test pictures, times
Checks of re-encoded copies one at a time alone for --seconds, then for --seconds beside CALLERS
threads sending 8 MB Checks with no token (each refused: UNAUTHENTICATED), after ALONE_S of those
callers alone: the refusals per second, and the front service's CPU per refusal. Prints those and
the Check's p50 and p99 in both phases. With
--beside DIR, the same again with the service of another checkout, in the same run.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.soak import Load, percentile, timed_checks
from service.api.auth import new_token
from service.api.channels import Credentials, channel
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import reencoded
from tools.service_process import RunningService, cpu_seconds

CALLERS = 4
ALONE_S = 10
IMAGES = Path(__file__).resolve().parent.parent / "tests" / "images"


def measure(seconds: float, code: Path | None, folder: Path) -> dict:
    pictures = {path.name: path.read_bytes() for path in sorted(IMAGES.glob("*.jpg"))}
    copies = [reencoded(data) for data in pictures.values()]
    token, entry = new_token("checker", ["check", "enroll"])
    (folder / "tokens.json").write_text(json.dumps({"tokens": [entry]}))
    flags = ("--auth-tokens", str(folder / "tokens.json"))
    service = RunningService(folder / "data", *flags, credentials=Credentials(token=token), cwd=code).wait_serving()
    try:
        stub = service.stub
        list(stub.Enroll((pb.EnrollRequest(key=name, image=data) for name, data in pictures.items()), timeout=600))
        started = time.monotonic()
        idle = timed_checks(stub, copies, lambda: time.monotonic() - started > seconds)

        stranger = pb_grpc.NearDupStub(channel(f"127.0.0.1:{service.port}", Credentials()))
        junk = pb.CheckRequest(image=b"\xff\xd8\xff" + bytes(8 << 20))
        load = Load()
        for _ in range(CALLERS):
            load.run("refused", lambda: stranger.Check(junk, timeout=30))
        time.sleep(1)
        cpu_before, refused_before = cpu_seconds(service.process.pid), load.codes["refused"].total()
        time.sleep(ALONE_S)  # the refusals' own cost, with no Check beside them
        cpu, refused = cpu_seconds(service.process.pid) - cpu_before, load.codes["refused"].total() - refused_before
        started = time.monotonic()
        beside = timed_checks(stub, copies, lambda: time.monotonic() - started > seconds)
        load.join()
    finally:
        service.stop()
    return {
        "idle_ms": {"p50": round(percentile(idle, 0.5), 1), "p99": round(percentile(idle, 0.99), 1)},
        "beside_refused_ms": {"p50": round(percentile(beside, 0.5), 1), "p99": round(percentile(beside, 0.99), 1)},
        "p99_vs_idle": round(percentile(beside, 0.99) / percentile(idle, 0.99), 2),
        "refused_per_s": round(refused / ALONE_S, 1),
        "refused_codes": dict(load.codes["refused"]),
        "service_cpu_ms_per_refusal": round(1000 * cpu / max(refused, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--beside", type=Path, help="another checkout, measured in the same run")
    arguments = parser.parse_args()
    runs = {"this checkout": None} | ({str(arguments.beside): arguments.beside} if arguments.beside else {})
    report = {}
    for name, code in runs.items():
        with tempfile.TemporaryDirectory() as work:
            report[name] = measure(arguments.seconds, code, Path(work))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
