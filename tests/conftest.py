"""Fixtures that run the real service (and the real bundled Triton) on 127.0.0.1."""

import os
import random
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.service_process import MilvusLite, RunningService, health_status, wait_for  # noqa: F401 - used by tests

IMAGES = Path(__file__).parent / "images"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """A service's /metrics: (sample name, sorted labels) -> value, parsed with Prometheus' own text parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(port: int, name: str, **labels) -> float:
    """One sample of a service's /metrics (0 when absent)."""
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def picture(name: str):
    """A committed test image, decoded to RGB."""
    from PIL import Image

    return Image.open(IMAGES / name).convert("RGB")


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


@pytest.fixture(scope="session")
def scratch_service(tmp_path_factory):
    """A second session service for tests that enrol whatever they like (fuzzing, malformed
    input), so the images they leave behind cannot change other tests' answers."""
    running = RunningService(tmp_path_factory.mktemp("scratch") / "data")
    try:
        yield running.wait_serving()
    finally:
        running.stop()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory):
    """A real Milvus (Milvus Lite's gRPC server) on 127.0.0.1, shared by the session's tests;
    each test uses its own collection."""
    server = MilvusLite(tmp_path_factory.mktemp("milvus") / "data").start()
    try:
        yield server.uri
    finally:
        server.stop()


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


def process_group(pgid: int) -> list[int]:
    """The processes of a process group, zombies left out, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # gone meanwhile
            continue
        if int(group) == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "State:\tZ" not in status


@pytest.fixture
def start_service(tmp_path):
    """Starts services (stopped at the end of the test): start_service(*flags, data_dir=..., port=...)."""
    started: list[RunningService] = []

    def start(*flags: str, data_dir: Path | None = None, **options) -> RunningService:
        running = RunningService(data_dir or tmp_path / "data", *flags, **options)
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


def faded(data: bytes) -> bytes:
    """A duplicate by the decision (its contrast cut to 0.4), yet far enough from the picture (cosine
    about 0.7-0.8) that a "not a duplicate" entry for it does not cover the picture itself."""
    import io

    from PIL import Image, ImageEnhance

    return encode_jpeg(ImageEnhance.Contrast(Image.open(io.BytesIO(data)).convert("RGB")).enhance(0.4), 85)


def reencoded(data: bytes, quality: int = 80) -> bytes:
    """The same picture saved again as JPEG: other bytes, a near-identical image."""
    import io

    from PIL import Image

    return encode_jpeg(Image.open(io.BytesIO(data)).convert("RGB"), quality)
