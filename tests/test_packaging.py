"""The package outside a checkout: the sdist carries protos/ and model_repository/, and a wheel built
from it, installed in a fresh venv, serves with the bundled Triton and rebuilds an index.

The fresh venv borrows its dependencies from this test environment (a .pth line naming its
site-packages, whose own .pth files, among them the editable install of this checkout, are not
read), so what is tested is what the wheel itself carries; installing the dependencies again
would only add minutes of copying.
"""

import signal
import site
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

from grpc_health.v1 import health_pb2

from service.api.channels import channel, stub
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.triton.process import free_port
from tests.conftest import image_bytes
from tools.service_process import START_TIMEOUT_S, health_status, wait_for

ROOT = Path(__file__).parent.parent


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_wheel_built_from_the_sdist_serves_and_rebuilds_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path, timeout=600)  # the wheel from the sdist
    [sdist], [wheel] = dist.glob("*.tar.gz"), dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"protos/neardup/v1/neardup.proto", "model_repository/sscd/config.pbtxt"} <= names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    packages = Path(run(venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp_path).strip())  # fmt: skip
    (packages / "borrowed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    where = run(venv / "bin/python", "-c", "import service.triton.process as p; print(p.default_model_repository())",
                cwd=tmp_path)  # fmt: skip
    assert Path(where.strip()) == packages / "service" / "model_repository"
    assert sysconfig.get_path("purelib") not in where

    data_dir, port = tmp_path / "data", free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [venv / "bin/neardup", "serve", "--port", str(port), "--data-dir", data_dir, "--metrics-port", "0"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        opened = channel(f"127.0.0.1:{port}")
        wait_for(lambda: health_status(opened) == health_pb2.HealthCheckResponse.SERVING, START_TIMEOUT_S, "SERVING")
        [result] = stub(f"127.0.0.1:{port}").Enroll(
            iter([pb.EnrollRequest(key="falcon", image=image_bytes("portrait-portraits-monsters-falcon.jpg"))]),
            timeout=60,
        )
        assert result.status == pb.EnrollResult.ENROLLED
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()

    rebuilt = run(venv / "bin/neardup", "index", "rebuild", "--data-dir", data_dir, "--quiet", cwd=tmp_path)
    assert rebuilt.startswith("index generation 1: 1 records of model sscd@224")
    assert (data_dir / "index" / "index-1.usearch").exists()
