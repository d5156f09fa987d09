"""`neardup serve --workers 2`: two front processes on one port, one Triton, one data directory."""

import os
import signal
from pathlib import Path

import grpc

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import children_of, metric, mosaic, pid_exists, process_name, reencoded, wait_for

FAST = ("--enroll-views", "1", "--check-views", "1")


def checks_answered(metrics_port: int) -> float:
    return metric(metrics_port, "neardup_rpc_requests_total", code="OK", method="Check", service="neardup.v1.NearDup")


def worker_pids(service) -> list[int]:
    children = children_of(service.process.pid)
    return [pid for pid in children if pid_exists(pid) and b"service.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_an_image_enrolled_through_one_worker_is_found_by_the_other_at_once(start_service):
    service = start_service(*FAST, "--workers", "2")
    workers = worker_pids(service)
    tritons = [pid for pid in children_of(service.process.pid) if process_name(pid) == "tritonserver"]
    assert len(workers) == 2 and len(tritons) == 1

    def ready(metrics_port: int) -> bool:
        try:
            return metric(metrics_port, "neardup_ready") == 1
        except OSError:  # its metrics are not served yet
            return False

    def both_ready() -> bool:  # each worker has its own metrics port: the base one and the next
        return all(ready(service.metrics_port + n) for n in range(2))

    # The port answers once one worker is ready; the other may not have reached Triton yet.
    wait_for(both_ready, 120, "both workers to be ready")
    image = mosaic(4100)
    [enrolled] = service.stub.Enroll(iter([pb.EnrollRequest(key="workers/one", image=image)]), timeout=60)
    assert enrolled.status == pb.EnrollResult.ENROLLED
    query = pb.CheckRequest(image=reencoded(image))
    for _ in range(16):  # a new connection each time (no shared subchannel): the kernel spreads them
        with grpc.insecure_channel(f"127.0.0.1:{service.port}", [("grpc.use_local_subchannel_pool", 1)]) as opened:
            assert pb_grpc.NearDupStub(opened).Check(query, timeout=60).matches[0].key == "workers/one"
    assert all(checks_answered(service.metrics_port + n) > 0 for n in range(2))  # both answered some

    # A worker that dies is started again; the other serves meanwhile.
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: len(set(worker_pids(service)) - {workers[0]}) == 2, 60, "the dead worker to be replaced")
    assert service.stub.Check(query, timeout=60).matches[0].key == "workers/one"

    every = worker_pids(service) + tritons
    assert service.stop(signal.SIGTERM) == 0
    assert not any(pid_exists(pid) for pid in every)
