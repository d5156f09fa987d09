"""The bundled Triton, attacked from a local client: every admin path is refused, it listens on
nothing but its loopback gRPC port, and the service stays SERVING."""

import os
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2
from tritonclient.utils import InferenceServerException

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import children_of, health_status, image_bytes, process_name


def bundled_triton(service, port_flag: str = "--grpc-port=") -> tuple[int, int]:
    """The tritonserver child's pid and gRPC (or another) port."""
    [pid] = [pid for pid in children_of(service.process.pid) if process_name(pid) == "tritonserver"]
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    [port] = [int(a.split("=", 1)[1]) for a in arguments if a.startswith(port_flag)]
    return pid, port


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    }
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


ATTACKS = {
    "load a model of its own": lambda c: c.load_model("sscd_distilled"),
    "unload ours": lambda c: c.unload_model("sscd"),
    "register shared memory": lambda c: c.register_system_shared_memory("attack", "/neardup-attack", 64),
    "list the repository": lambda c: c.get_model_repository_index(),
    "read the model's config": lambda c: c.get_model_config("sscd"),
    "read statistics": lambda c: c.get_inference_statistics(),
    "change the log settings": lambda c: c.update_log_settings({"log_verbose_level": 1}),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_admin_protocols_are_refused(service, attack):
    _, port = bundled_triton(service)
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException):
        ATTACKS[attack](client)
    assert client.is_model_ready("sscd")  # ours is still there
    assert health_status(service.channel) == health_pb2.HealthCheckResponse.SERVING
    assert len(service.stub.Hash(pb.HashRequest(image=image_bytes("gnome-vnc.jpg")), timeout=60).feature) == 512


def test_it_listens_on_loopback_only_for_grpc_and_its_metrics(service):
    pid, port = bundled_triton(service)
    _, metrics_port = bundled_triton(service, "--metrics-port=")
    sockets = listening(pid)
    assert {found for _, found in sockets} == {port, metrics_port}  # no HTTP
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "nv_inference_request_success" in scraped
    # 127.0.0.1 in /proc's byte order, as IPv4 or IPv4-mapped IPv6 (::ffff:127.0.0.1).
    assert all(address in ("0100007F", "0000000000000000FFFF00000100007F") for address, _ in sockets), sockets
