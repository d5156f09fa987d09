"""Fixtures that run the real service (and the real bundled Triton) on 127.0.0.1."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.neardup.v1 import neardup_pb2_grpc
from service.triton_process import free_port

IMAGES = Path(__file__).parent / "images"
SERVICE_NAME = "neardup.v1.NearDup"
START_TIMEOUT_S = 180


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def manifest() -> list[dict]:
    return json.loads((IMAGES / "manifest.json").read_text())


def health_status(channel: grpc.Channel, timeout: float = 2.0) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout).status


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError:
            pass
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class RunningService:
    """`neardup serve` as a child process, with a channel to it."""

    def __init__(self, data_dir: Path, *flags: str):
        self.port = free_port()
        self.log_path = data_dir.parent / f"service-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
        ]
        self.process = subprocess.Popen([*command, *flags], stdout=self.log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = neardup_pb2_grpc.NearDupStub(self.channel)

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> "RunningService":
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.output()}")
            return health_status(self.channel) == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout_s, "the service to report SERVING")
        return self

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        self.log.close()
        return code


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """One service for the session, with a small request limit so the limit can be tested."""
    running = RunningService(tmp_path_factory.mktemp("service") / "data", "--max-request-bytes", str(8 << 20))
    try:
        yield running.wait_serving()
    finally:
        running.stop()


@pytest.fixture(scope="session")
def stub(service):
    return service.stub


def children_of(pid: int) -> list[int]:
    """Direct child processes, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(child) for child in children)
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "State:\tZ" not in status


@pytest.fixture
def start_service(tmp_path):
    """Starts services (stopped at the end of the test): start_service(*flags, data_dir=...)."""
    started: list[RunningService] = []

    def start(*flags: str, data_dir: Path | None = None) -> RunningService:
        running = RunningService(data_dir or tmp_path / "data", *flags)
        started.append(running)
        return running.wait_serving()

    yield start
    for running in started:
        if running.process.poll() is None:
            running.stop()


def committed_image_names() -> list[str]:
    return sorted(p.name for p in IMAGES.glob("*.jpg"))


def mosaic(number: int, side: int = 320) -> bytes:
    """A distinct, deterministic picture: four quadrants, each a random crop of a random test image."""
    from PIL import Image

    rng = random.Random(f"mosaic {number}")
    canvas = Image.new("RGB", (side, side))
    half = side // 2
    for quadrant, name in enumerate(rng.sample(committed_image_names(), 4)):
        source = Image.open(IMAGES / name).convert("RGB")
        scale = rng.uniform(0.4, 0.8)
        width, height = round(source.width * scale), round(source.height * scale)
        left, top = rng.randint(0, source.width - width), rng.randint(0, source.height - height)
        tile = source.crop((left, top, left + width, top + height)).resize((half, half))
        canvas.paste(tile, ((quadrant % 2) * half, (quadrant // 2) * half))
    return encode_jpeg(canvas, quality=90)


def encode_jpeg(image, quality: int = 90) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def reencoded(data: bytes, quality: int = 80) -> bytes:
    """The same picture saved again as JPEG: other bytes, a near-identical image."""
    import io

    from PIL import Image

    return encode_jpeg(Image.open(io.BytesIO(data)).convert("RGB"), quality)
