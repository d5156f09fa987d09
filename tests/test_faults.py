"""Faults an unlucky operator meets, each against the real service: a second instance, a port in
use, a damaged LMDB, a full disk mid-Enroll, Triton killed mid-Enroll, damaged index files."""

import json
import resource
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.store import Store
from tests.conftest import children_of, mosaic, process_name, reencoded, wait_for

FAST = ("--enroll-views", "1", "--check-views", "1")


def serve(data_dir, *flags: str, port: int | None = None) -> subprocess.CompletedProcess:
    """`neardup serve` that is expected to exit at start-up."""
    command = [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir), *flags]
    if port:
        command += ["--port", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_second_service_on_the_same_data_directory_exits_at_once(tmp_path, start_service):
    first = start_service(*FAST)
    started = time.monotonic()
    second = serve(first.data_dir)
    assert second.returncode == 1 and time.monotonic() - started < 20
    assert f"another neardup service (pid {first.process.pid}) is using" in second.stderr
    assert first.stub.Stats(pb.StatsRequest(), timeout=10).records == 0  # the first one is unharmed


def test_a_port_in_use_fails_before_triton_starts(tmp_path, start_service):
    first = start_service(*FAST)
    second = serve(tmp_path / "other", port=first.port)
    assert second.returncode == 1 and "is the port in use? (give this service another --port)" in second.stderr
    assert "tritonserver" not in second.stderr  # nothing was started, so nothing is left behind
    metrics_taken = serve(tmp_path / "third", "--metrics-port", str(first.metrics_port))
    assert metrics_taken.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{first.metrics_port}: Address already in use" in metrics_taken.stderr
    assert "give this one another --metrics-port" in metrics_taken.stderr
    assert (tmp_path / "other" / "neardup.lock").exists()  # and the lock it took died with it
    third = start_service(*FAST, data_dir=tmp_path / "other")
    assert third.stub.Stats(pb.StatsRequest(), timeout=10).records == 0


def test_a_damaged_store_is_refused_at_start_with_what_to_do(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="a", image=mosaic(1))]), timeout=60))
    service.stop()
    data = data_dir / "store.lmdb" / "data.mdb"
    damaged = bytearray(data.read_bytes())
    damaged[: 4096 * 2] = b"\xa5" * (4096 * 2)  # both meta pages
    data.write_bytes(bytes(damaged))
    refused = serve(data_dir)
    assert refused.returncode == 1
    assert "is damaged" in refused.stderr and "Restore the data directory from a backup" in refused.stderr


def test_a_store_cut_short_is_refused_at_start_not_a_crash(tmp_path, start_service):
    """A data.mdb shorter than its pages (a copy that stopped half-way): one line, not SIGBUS."""
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    requests = [pb.EnrollRequest(key=f"cut/{n}", image=mosaic(100 + n)) for n in range(8)]
    list(service.stub.Enroll(iter(requests), timeout=120))
    service.stop()
    data = data_dir / "store.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    refused = serve(data_dir)
    assert refused.returncode == 1 and "Fatal Python error" not in refused.stderr, refused.stderr
    assert "cut short" in refused.stderr and "Restore the data directory from a backup" in refused.stderr
    for command in (["backup", str(tmp_path / "copy")], ["index", "rebuild", "--quiet"]):  # they read it too
        ran = subprocess.run([sys.executable, "-m", "service.cli", *command, "--data-dir", str(data_dir)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert ran.returncode == 1 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
        assert (
            ran.stderr.startswith(f"neardup {command[0]}: the store in {data_dir} cannot be read")
            and "cut short" in ran.stderr
        )


FILE_SIZE_LIMIT = 8 << 20


def test_a_full_disk_mid_enroll_is_resource_exhausted_and_loses_nothing_acknowledged(tmp_path, start_service):
    """The service may write files of at most 8 MB: a record takes about 110 kB (its reference, its
    verification points, 7.5 kB of metadata), so some 70 fit, in Enroll batches of 16. The batch
    that fails leaves unused pages at the file's end, more than the readiness probe's 1 MiB: the
    probe must write past them to learn anything. The limit is set once it serves, on its own
    process: its Triton, started already, grows its shared memory past the limit under load, and
    that is not the disk this test fills."""
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    resource.prlimit(service.process.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))
    image = mosaic(7)
    requests = [pb.EnrollRequest(key=f"full/{i}", image=image, metadata={"pad": f"{i:>5}" * 1_500}) for i in range(400)]
    acknowledged = []
    with pytest.raises(grpc.RpcError) as raised:
        for result in service.stub.Enroll(iter(requests), timeout=120):
            assert result.status == pb.EnrollResult.ENROLLED, result.error
            acknowledged.append(result.key)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
    assert "is its disk full?" in raised.value.details() and 10 < len(acknowledged) < 400
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("store", "neardup.v1.NearDup"):
        wait_for(
            lambda name=name: (
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            5,
            f"{name} NOT_SERVING",
        )
    assert any(line.startswith("store: ") for line in service.stub.Stats(pb.StatsRequest(), timeout=10).not_ready)
    liveness = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert liveness == health_pb2.HealthCheckResponse.SERVING  # not ready, but alive
    assert service.stub.Check(pb.CheckRequest(image=image), timeout=30).matches  # reads still work

    resource.prlimit(service.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_for(
        lambda: (
            health.Check(health_pb2.HealthCheckRequest(service="store"), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        ),
        20,
        "the store to be writable again",
    )
    service.stop()
    store = Store(data_dir, readonly=True)
    with store.read() as view:
        assert all(view.by_key(key) is not None for key in acknowledged)
        assert view.count() >= len(acknowledged)
    store.close()


def test_triton_killed_mid_enroll_loses_nothing_acknowledged(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, "--triton-restart-delay-s", "0.5", data_dir=data_dir)
    [triton] = [pid for pid in children_of(service.process.pid) if process_name(pid) == "tritonserver"]
    images = {f"k/{i}": mosaic(3000 + i) for i in range(150)}
    acknowledged = []
    try:
        requests = (pb.EnrollRequest(key=key, image=image) for key, image in images.items())
        for result in service.stub.Enroll(requests, timeout=120):
            assert result.status == pb.EnrollResult.ENROLLED
            acknowledged.append(result.key)
            if len(acknowledged) == 30:
                subprocess.run(["kill", "-9", str(triton)], check=True)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert len(acknowledged) >= 30
    for key in acknowledged[::10]:
        check = pb.CheckRequest(image=reencoded(images[key]))
        response = wait_for(lambda check=check: service.stub.Check(check, timeout=30), 120, "Triton to be back")
        assert response.matches[0].key == key
    assert service.stub.Stats(pb.StatsRequest(), timeout=10).records == len(acknowledged)
    service.stop(signal.SIGTERM)


def test_a_manifest_with_wrong_types_is_refused_and_the_reload_loop_keeps_working(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, "--index-poll-s", "0.2", data_dir=data_dir)
    list(service.stub.Enroll(iter(pb.EnrollRequest(key=f"m/{i}", image=mosaic(i)) for i in range(5)), timeout=60))
    rebuild = [sys.executable, "-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir)]
    subprocess.run(rebuild, check=True, capture_output=True, timeout=60)
    wait_for(lambda: service.stub.Stats(pb.StatsRequest(), timeout=5).index_generation == 1, 20, "generation 1")
    manifest = data_dir / "index" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"generation": [2], "count": "many"}))
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is corrupt" in raised.value.details()
    subprocess.run(rebuild, check=True, capture_output=True, timeout=60)  # a good one, found by the poll
    wait_for(lambda: service.stub.Stats(pb.StatsRequest(), timeout=5).index_generation == 2, 20, "generation 2")
    assert "is corrupt" in service.output() and "background task" not in service.output()
