"""What an operator sees: Prometheus metrics with the right counts, health per component with its
reason (liveness apart from readiness), JSON logs with the request id."""

import json
import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import mosaic, reencoded, scrape, wait_for

ROOT = Path(__file__).parent.parent
FAST = ("--enroll-views", "1", "--check-views", "1")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def health(service, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(service.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    from tools.service_process import RunningService

    folder = tmp_path_factory.mktemp("observed")
    running = RunningService(folder / "data", *FAST, "--index-stale-records", "4", "--log-format", "json")
    try:
        yield running.wait_serving()
    finally:
        running.stop()


def test_metrics_count_what_happened(observed):
    images = {f"obs/{i}": mosaic(800 + i) for i in range(6)}
    requests = [pb.EnrollRequest(key=k, image=v) for k, v in images.items()]
    requests.append(pb.EnrollRequest(key="obs/bad", image=b"not an image"))
    results = list(observed.stub.Enroll(iter(requests), timeout=60))
    checks = [observed.stub.Check(pb.CheckRequest(image=reencoded(v)), timeout=30) for v in images.values()]
    identical = observed.stub.Check(pb.CheckRequest(image=images["obs/0"]), timeout=30)
    new = observed.stub.Check(pb.CheckRequest(image=mosaic(900)), timeout=30)
    with pytest.raises(grpc.RpcError):
        observed.stub.Delete(pb.DeleteRequest(key="obs/absent"), timeout=10)
    assert identical.identical and not new.is_duplicate and sum(c.is_duplicate for c in checks) >= 5

    ours = "neardup.v1.NearDup"
    deleted = (("code", "NOT_FOUND"), ("method", "Delete"), ("service", ours))
    # An aborted call's status reaches the caller before the interceptor counts it (grpc.aio sends
    # it from context.abort), so a scrape at once can be a moment early: wait for that one count.
    scraped = wait_for(
        lambda: (found := scrape(observed.metrics_port)).get(("neardup_rpc_requests_total", deleted)) and found,
        10,
        "the refused Delete to be counted",
    )

    def value(name: str, **labels) -> float:
        return scraped.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("neardup_rpc_requests_total", service=ours, method="Check", code="OK") == 8
    assert value("neardup_rpc_requests_total", service=ours, method="Enroll", code="OK") == 1
    assert value("neardup_rpc_requests_total", service=ours, method="Delete", code="NOT_FOUND") == 1
    assert value("neardup_rpc_duration_seconds_count", service=ours, method="Check") == 8
    assert value("neardup_rpc_requests_total", service="grpc.health.v1.Health", method="Check", code="OK") >= 1
    duplicates = sum(c.is_duplicate and not c.identical for c in checks)
    assert value("neardup_decisions_total", decision="duplicate") == duplicates
    assert value("neardup_decisions_total", decision="identical") == 1 + sum(c.identical for c in checks)
    assert value("neardup_decisions_total", decision="new") == 1 + sum(not c.is_duplicate for c in checks)
    assert value("neardup_enroll_results_total", status="ENROLLED") == 6
    assert value("neardup_enroll_results_total", status="INVALID") == 1
    assert sum(r.status == pb.EnrollResult.ENROLLED for r in results) == 6
    # Triton: the 6 good enrolments, each picture and its small view (in as many batches as the
    # stream's timing made), and the views each of the 7 Checks that were not byte-identical
    # reports: its own, and when it matched nothing as a whole, its regions' boxes, in one request each.
    embedded = checks + [new]
    views, region_stages = sum(c.views for c in embedded), sum(c.views > 1 for c in embedded)
    assert all(c.views >= 1 for c in embedded) and identical.views == 0
    triton_requests = value("neardup_triton_request_duration_seconds_count")
    assert triton_requests == value("neardup_triton_batch_images_count")
    assert 1 + 7 + region_stages <= triton_requests <= 6 + 7 + 2 * region_stages
    assert value("neardup_triton_batch_images_sum") == 2 * 6 + views
    assert value("neardup_store_records") == 6 and value("neardup_store_writable") == 1 and value("neardup_ready") == 1
    assert value("neardup_small_views") == 6
    assert value("neardup_index_generation") == 0 and value("neardup_index_live_added_records") == 6
    assert 0 < value("neardup_store_map_used_ratio") < 1 and value("neardup_store_bytes") > 0

    # Every series the Grafana dashboard draws is one the service exports.
    exported = {name for name, _ in scraped}
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "neardup.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"neardup_[a-z_]+", target["expr"]):
                assert name in exported, f"{panel['title']}: {name}"


def test_every_metric_the_service_exports_is_in_the_operators_guide(observed):
    documented = (ROOT / "docs" / "operations.md").read_text()
    exported = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name, _ in scrape(observed.metrics_port)}
    ours = {name for name in exported if name.startswith("neardup_")}
    assert len(ours) > 20 and "neardup_verification_kept_bytes" in ours
    assert not [name for name in ours if name not in documented]


def test_health_per_component_with_its_reason(observed):
    # More than --index-stale-records (4) enrolled since the (absent) snapshot: the index is stale.
    list(observed.stub.Enroll(iter(pb.EnrollRequest(key=f"stale/{i}", image=mosaic(950 + i)) for i in range(5))))
    wait_for(lambda: health(observed, "index") == NOT_SERVING, 10, "the index component to be stale")
    assert health(observed, "") == SERVING  # liveness
    assert health(observed, "neardup.v1.NearDup") == SERVING  # a stale index still answers right
    assert health(observed, "triton") == SERVING and health(observed, "store") == SERVING
    [reason] = observed.stub.Stats(pb.StatsRequest(), timeout=10).not_ready
    assert reason.startswith("index: stale:") and "neardup index rebuild" in reason


def test_logs_are_json_lines_with_the_request_id(observed):
    with pytest.raises(grpc.RpcError):
        observed.stub.Delete(pb.DeleteRequest(key="json/absent"), metadata=[("x-request-id", "req-json-1")], timeout=10)

    def logged():
        lines = [json.loads(line) for line in observed.output().splitlines() if line.startswith("{")]
        return next((line for line in lines if line.get("request_id") == "req-json-1"), None)

    line = wait_for(logged, 10, "the call's JSON log line")
    assert line["level"] == "INFO" and "NOT_FOUND" in line["message"] and line["time"].endswith("Z")


def test_the_runtime_is_reported_and_recorded_with_the_features(observed):
    list(observed.stub.Enroll(iter([pb.EnrollRequest(key="runtime/1", image=mosaic(990))]), timeout=60))
    stats = observed.stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.runtime.startswith("onnxruntime ") and stats.runtime.endswith(" CPUExecutionProvider int8")
    [stored] = stats.stored_runtimes
    assert stored.startswith(f"{stats.runtime}: ")
    scraped = scrape(observed.metrics_port)
    assert scraped[("neardup_model_runtime_info", (("runtime", stats.runtime),))] == 1


def test_features_made_by_another_runtime_are_reported(tmp_path, start_service):
    from service.storage.records import Enrolment
    from service.storage.store import Store
    from tests.test_store import unit

    gpu = "onnxruntime 1.22.0 CUDAExecutionProvider int8"
    store = Store(tmp_path / "data")
    store.enroll("sscd@224", [Enrolment("made/on-gpu", b"\1" * 32, unit(1), 0.0, {}, runtime=gpu)])
    store.close()
    service = start_service(*FAST, data_dir=tmp_path / "data")
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="made/here", image=mosaic(991))]), timeout=60))
    stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
    assert sorted(stats.stored_runtimes) == sorted([f"{gpu}: 1", f"{stats.runtime}: 1"])
    wait_for(lambda: f"were made by '{gpu}'" in service.output(), 10, "the mixed runtimes in the log")


def test_a_cpu_host_is_not_warned_about_the_gpu_it_lacks(observed):
    """The CPU tritonserver's CUDA and NVML warnings at start are dropped from the log; its other lines
    are passed on as they are."""
    import io

    from service.triton.process import relay_output

    assert "CudaDriverHelper" not in observed.output() and "NVML" not in observed.output()
    said = b"W1207 CudaDriverHelper has not been initialized.\nE1207 model failed\nW1207 Failed to initialize NVML\n"
    relayed = io.BytesIO()
    relay_output(io.BytesIO(said), relayed)
    assert relayed.getvalue() == b"E1207 model failed\n"
