"""The one client-channel factory: the CLI, the probe, the tools, the tests and the benchmarks reach
the service through it, with the same options: TLS (a CA to trust, a client certificate for
mutual TLS) and a bearer token.

Each option also reads an environment variable (NEARDUP_SERVER, NEARDUP_TOKEN, NEARDUP_TLS_CA,
NEARDUP_CLIENT_CERT, NEARDUP_CLIENT_KEY), so a token need not appear in a command line.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass(frozen=True)
class Credentials:
    token: str = ""
    tls_ca: str = ""  # PEM file: a TLS channel trusting it (empty: plaintext)
    client_cert: str = ""  # PEM files of the client's certificate, for mutual TLS
    client_key: str = ""

    @classmethod
    def from_environment(cls) -> "Credentials":
        return cls(*(os.environ.get(variable, "") for variable in ENVIRONMENT))


ENVIRONMENT = ("NEARDUP_TOKEN", "NEARDUP_TLS_CA", "NEARDUP_CLIENT_CERT", "NEARDUP_CLIENT_KEY")


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call, of each of gRPC's four kinds (plaintext on
    loopback too)."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def channel(address: str = DEFAULT_SERVER, credentials: Credentials | None = None) -> grpc.Channel:
    credentials = credentials if credentials is not None else Credentials.from_environment()
    if credentials.tls_ca or credentials.client_cert:

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        tls = grpc.ssl_channel_credentials(
            read(credentials.tls_ca), read(credentials.client_key), read(credentials.client_cert)
        )
        opened = grpc.secure_channel(address, tls)
    else:
        opened = grpc.insecure_channel(address)
    return grpc.intercept_channel(opened, BearerToken(credentials.token)) if credentials.token else opened


def stub(address: str = DEFAULT_SERVER, credentials: Credentials | None = None) -> pb_grpc.NearDupStub:
    return pb_grpc.NearDupStub(channel(address, credentials))


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """--server and the credentials, for every command that calls the service; each credential falls
    back to its variable when the command runs (so --help never shows a token)."""
    parser.add_argument(
        "--server",
        default=os.environ.get("NEARDUP_SERVER", DEFAULT_SERVER),
        help="the service's address (env NEARDUP_SERVER)",
    )
    for flag, variable, meaning in (
        ("--token", "NEARDUP_TOKEN", "bearer token (prefer the variable: a flag shows in the process list)"),
        ("--tls-ca", "NEARDUP_TLS_CA", "PEM CA file to trust: connect with TLS"),
        ("--client-cert", "NEARDUP_CLIENT_CERT", "PEM client certificate, for mutual TLS"),
        ("--client-key", "NEARDUP_CLIENT_KEY", "PEM client private key, for mutual TLS"),
    ):
        parser.add_argument(flag, default="", help=f"{meaning} (env {variable})")


def credentials_from(arguments: argparse.Namespace) -> Credentials:
    given = (arguments.token, arguments.tls_ca, arguments.client_cert, arguments.client_key)
    return Credentials(*(value or os.environ.get(name, "") for value, name in zip(given, ENVIRONMENT, strict=True)))


def stub_from(arguments: argparse.Namespace) -> pb_grpc.NearDupStub:
    return stub(arguments.server, credentials_from(arguments))


def channel_from(arguments: argparse.Namespace) -> grpc.Channel:
    return channel(arguments.server, credentials_from(arguments))
