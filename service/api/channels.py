"""The one client-channel factory: the CLI, the probe, the tools, the tests and the benchmarks
reach the service through it (TLS and credentials will be added here, once)."""

import grpc

from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"


def channel(address: str = DEFAULT_SERVER) -> grpc.Channel:
    return grpc.insecure_channel(address)


def stub(address: str = DEFAULT_SERVER) -> pb_grpc.NearDupStub:
    return pb_grpc.NearDupStub(channel(address))
