"""Triton going away: UNAVAILABLE within the deadline, NOT_SERVING, and recovery without help."""

import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.triton.process import BundledTriton
from tests.conftest import (
    RunningService,
    children_of,
    health_status,
    image_bytes,
    pid_exists,
    process_name,
    wait_for,
)

JPEG = image_bytes("gnome-truchet.jpg")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ExternalTriton:
    """The bundled tritonserver run by the test itself, on fixed ports, so it can be stopped and restarted."""

    def __init__(self, log_dir):
        self.triton = BundledTriton(["sscd"], Settings().triton.model_repository)
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_dir / "triton.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = self.triton.spawn(log)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)


def assert_unavailable_within_deadline(stub, deadline_s: float = 5.0) -> str:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Hash(pb.HashRequest(image=JPEG), timeout=deadline_s)
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert elapsed < deadline_s
    return raised.value.details()


def test_external_triton_stopped_then_back(tmp_path):
    triton = ExternalTriton(tmp_path)
    triton.start()
    service = RunningService(tmp_path / "data", "--triton-url", triton.triton.url)
    try:
        service.wait_serving()
        assert len(service.stub.Hash(pb.HashRequest(image=JPEG), timeout=60).feature) == 512

        triton.kill()
        details = assert_unavailable_within_deadline(service.stub)
        assert triton.triton.url in details
        wait_for(lambda: health_status(service.channel) == NOT_SERVING, 10, "health to go NOT_SERVING")
        health = health_pb2_grpc.HealthStub(service.channel)
        component = health.Check(health_pb2.HealthCheckRequest(service="triton"), timeout=5).status
        liveness = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert (component, liveness) == (NOT_SERVING, SERVING)  # not ready, but alive: no restart needed
        [reason] = service.stub.Stats(pb.StatsRequest(), timeout=10).not_ready
        assert reason.startswith("triton: ") and triton.triton.url in reason

        triton.start()
        wait_for(lambda: health_status(service.channel) == SERVING, 120, "health to come back to SERVING")
        assert len(service.stub.Hash(pb.HashRequest(image=JPEG), timeout=60).feature) == 512
    finally:
        service.stop()
        if triton.process.poll() is None:
            triton.kill()


def test_bundled_triton_is_restarted_after_it_dies_and_stopped_with_the_service(tmp_path):
    service = RunningService(tmp_path / "data", "--triton-restart-delay-s", "3")
    service.wait_serving()
    try:
        [triton_pid] = [pid for pid in children_of(service.process.pid) if process_name(pid) == "tritonserver"]
        subprocess.run(["kill", "-9", str(triton_pid)], check=True)
        assert_unavailable_within_deadline(service.stub)
        wait_for(lambda: health_status(service.channel) == NOT_SERVING, 10, "health to go NOT_SERVING")
        wait_for(lambda: health_status(service.channel) == SERVING, 120, "the restarted Triton to serve")
        assert len(service.stub.Hash(pb.HashRequest(image=JPEG), timeout=60).feature) == 512
        [restarted_pid] = [pid for pid in children_of(service.process.pid) if process_name(pid) == "tritonserver"]
    finally:
        code = service.stop(signal.SIGINT)
    assert code == 0, service.output()
    assert not pid_exists(restarted_pid), "tritonserver outlived the service"
    assert "stopped" in service.output()
