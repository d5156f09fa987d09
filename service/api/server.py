"""The gRPC server: its options (limits, keepalive, idle connections), its interceptor chain, the
port (bound at once, so a port in use fails before anything else starts) and its services."""

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import workers
from service.api.interceptors import interceptor_chain
from service.api.security import Security
from service.api.servicer import SERVICE_NAME, NearDupServicer
from service.config import Settings
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc

KEEPALIVE_TIMEOUT_MS = 20_000  # a peer that does not answer a ping this fast is gone
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # clients may ping this often without being told off
STREAM_WINDOW_BYTES = 1 << 20  # bytes a caller may send on a stream ahead of our reading them


class PortInUse(RuntimeError):
    pass


def grpc_server(settings: Settings, security: Security) -> tuple[grpc.aio.Server, str]:
    """The server, already bound to its port (so a port in use fails before anything starts)."""
    limits = settings.limits
    server = grpc.aio.server(
        interceptors=interceptor_chain(
            SERVICE_NAME, limits.max_concurrent_calls, limits.max_calls_per_caller, security.interceptor()
        ),
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            # A fixed window per stream instead of one grown to the link's bandwidth-delay product:
            # a caller refused before its message is read (no token) can push at most this much at
            # us, not the whole 8 MB (benchmarks/refusals.py: 3.7 -> 1.6 ms of CPU per refusal).
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
            ("grpc.max_send_message_length", limits.max_request_bytes),
            # A port in use is an error, not a second server sharing it; workers share it on purpose.
            ("grpc.so_reuseport", 1 if workers.is_worker() else 0),
            ("grpc.max_connection_idle_ms", int(limits.connection_idle_s * 1000)),
            ("grpc.keepalive_time_ms", int(limits.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    address = f"{settings.server.host}:{settings.server.port}"
    try:
        bound = security.add_port(server, address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if bound == 0:
        raise PortInUse(f"cannot listen on {address}: is the port in use? (give this service another --port)")
    return server, address


def add_services(server: grpc.aio.Server, servicer: NearDupServicer, health_servicer: health.aio.HealthServicer):
    pb_grpc.add_NearDupServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
