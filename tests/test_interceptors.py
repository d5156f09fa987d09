"""The interceptor chain: every call's log lines carry its request id."""

import re

import grpc
import pytest

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import wait_for


def log_line(service, pattern: str) -> str:
    def found():
        return next((line for line in service.output().splitlines() if re.search(pattern, line)), None)

    return wait_for(found, 10, f"a log line matching {pattern!r}")


def test_the_callers_request_id_is_on_the_calls_log_lines(service):
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.Delete(pb.DeleteRequest(key="absent/one"), metadata=[("x-request-id", "caller-7f3a")], timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "[caller-7f3a]: Delete: NOT_FOUND" in log_line(service, "absent/one")


def test_a_call_without_one_gets_its_own(service):
    with pytest.raises(grpc.RpcError):
        service.stub.Delete(pb.DeleteRequest(key="absent/two"), timeout=10)
    assert re.search(r"\[[0-9a-f]{16}\]: Delete: NOT_FOUND", log_line(service, "absent/two"))
