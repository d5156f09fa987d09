"""`neardup serve` as a child process on 127.0.0.1, for the tests and the benchmark tools."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import channels
from service.proto.neardup.v1 import neardup_pb2_grpc
from service.triton.process import free_port

SERVICE_NAME = "neardup.v1.NearDup"
START_TIMEOUT_S = 180


def health_status(channel: grpc.Channel, timeout: float = 2.0) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout).status


def resident_mb(pid: int) -> float:
    """A process's resident memory in MB, from /proc (0 once it is gone)."""
    path = Path(f"/proc/{pid}/status")
    lines = path.read_text().splitlines() if path.exists() else []
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)


def resident_parts_mb(pid: int) -> dict[str, float]:
    """A process's resident memory in MB by kind, from /proc: "anon" (its heaps: what it allocated),
    "file" (mapped files' pages: the store, the index snapshot, libraries), "shmem" (shared memory)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    kinds = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    return {kinds[line.split()[0]]: int(line.split()[1]) / 1024 for line in lines if line.split()[0] in kinds}


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_resident_mb(pid: int) -> float:
    """A process's peak resident memory in MB (Linux's VmHWM), since it started or since
    reset_peak_resident(pid)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))


def reset_peak_resident(pid: int) -> None:
    """The process's peak resident memory starts again from its memory now (Linux)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


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

    def __init__(
        self,
        data_dir: Path,
        *flags: str,
        port: int | None = None,
        credentials: channels.Credentials | None = None,
        cwd: Path | None = None,
    ):
        """`cwd`: the checkout whose code serves (`python -m service.cli` runs from there; default: this one's)."""
        self.port = port or free_port()
        self.data_dir = data_dir
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
        if "--metrics-port" not in flags:  # several services run at once in the tests
            self.metrics_port = free_port()
            flags = (*flags, "--metrics-port", str(self.metrics_port))
        self.process = subprocess.Popen([*command, *flags], stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        self.channel = channels.channel(f"127.0.0.1:{self.port}", credentials)
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


class MilvusLite:
    """A real Milvus endpoint for the milvus index backend: Milvus Lite's gRPC server on
    127.0.0.1 (the tests' and benchmarks' stand-in for Milvus standalone)."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"milvus-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MilvusLite":
        import socket

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=log,
            )  # fmt: skip

        def listening() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 60, "Milvus Lite to listen")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
