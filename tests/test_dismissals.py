"""The "not a duplicate" memory through the service: a dismissed pair stops being a duplicate,
for re-encoded copies of the query too; it comes back when the entry is removed, survives a
restart and a rebuild, and goes with the enrolled key."""

import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import json_format

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import faded, mosaic, reencoded

FAST = ("--enroll-views", "1", "--check-views", "1")


def check(service, image: bytes) -> pb.CheckResponse:
    return service.stub.Check(pb.CheckRequest(image=image, top_k=3), timeout=60)


def test_a_dismissed_pair_is_no_longer_a_duplicate(start_service, tmp_path):
    service = start_service(*FAST, data_dir=tmp_path / "d")
    enrolled, other = mosaic(8001), mosaic(8002)
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="poster", image=enrolled),
                                   pb.EnrollRequest(key="other", image=other)]), timeout=60))  # fmt: skip
    # The caller says: this picture (a faded copy) is not a duplicate of "poster".
    query = faded(enrolled)
    assert check(service, query).is_duplicate
    entry = service.stub.Dismiss(pb.DismissRequest(image=query, key="poster"), timeout=60)
    for image in (query, reencoded(query, 60)):  # the picture, and a re-encoded copy of it
        reply = check(service, image)
        assert not reply.is_duplicate
        assert reply.matches[0].key == "poster" and reply.matches[0].dismissed and not reply.matches[0].is_duplicate
    assert check(service, reencoded(other)).is_duplicate  # other keys are untouched
    listed = service.stub.ListDismissals(pb.ListDismissalsRequest(), timeout=10).dismissals
    assert [(d.id, d.key) for d in listed] == [(entry.id, "poster")]
    made = json_format.MessageToDict(listed[0], preserving_proto_field_name=True)["created"]  # RFC 3339 in JSON
    assert made.endswith("Z") and abs(listed[0].created.ToNanoseconds() / 1e9 - time.time()) < 120

    # It survives a restart and an index rebuild.
    service.stop()
    rebuild = ["index", "rebuild", "--data-dir", str(tmp_path / "d"), "--quiet", "--nice", "0"]
    rebuilt = subprocess.run([sys.executable, "-m", "service.cli", *rebuild], capture_output=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    service = start_service(*FAST, data_dir=tmp_path / "d")
    assert check(service, query).index_generation == 1 and not check(service, query).is_duplicate

    # Removed: the pair is a duplicate again.
    service.stub.RemoveDismissal(pb.RemoveDismissalRequest(id=entry.id), timeout=10)
    assert check(service, query).is_duplicate
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.RemoveDismissal(pb.RemoveDismissalRequest(id=entry.id), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_query_key_stands_for_the_picture_and_entries_go_with_the_enrolled_key(start_service, tmp_path):
    service = start_service(*FAST, data_dir=tmp_path / "d")
    target = mosaic(8003)
    look_alike = faded(target)  # enrolled apart, in another collection
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="a", image=target),
                                   pb.EnrollRequest(key="b", image=look_alike, collection="c")]),
                             timeout=60))  # fmt: skip
    service.stub.Dismiss(pb.DismissRequest(query_key="b", query_collection="c", key="a"), timeout=10)
    reply = service.stub.Check(pb.CheckRequest(image=reencoded(look_alike, 40), top_k=3, collections=[""]), timeout=60)
    assert reply.matches[0].key == "a" and reply.matches[0].dismissed and not reply.is_duplicate
    service.stub.Delete(pb.DeleteRequest(key="a"), timeout=10)
    assert service.stub.ListDismissals(pb.ListDismissalsRequest(), timeout=10).dismissals == []
    # The same picture enrolled again under the key: the entry went with the Delete, it does not come back.
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="a", image=target)]), timeout=60))
    reply = service.stub.Check(pb.CheckRequest(image=reencoded(look_alike, 40), top_k=3, collections=[""]), timeout=60)
    assert reply.matches[0].key == "a" and reply.is_duplicate and not reply.matches[0].dismissed


def test_bad_dismissals_are_refused(start_service, tmp_path):
    service = start_service(*FAST, data_dir=tmp_path / "d")
    picture = mosaic(8004)
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="k", image=picture)]), timeout=60))
    for request, code in [
        (pb.DismissRequest(image=picture, key="absent"), grpc.StatusCode.NOT_FOUND),
        (pb.DismissRequest(key="k"), grpc.StatusCode.INVALID_ARGUMENT),  # no picture
        (pb.DismissRequest(image=picture, key="k"), grpc.StatusCode.INVALID_ARGUMENT),  # the image itself
        (pb.DismissRequest(query_key="k", key="k"), grpc.StatusCode.INVALID_ARGUMENT),  # the record itself
        (pb.DismissRequest(image=reencoded(picture, 60), key="k"), grpc.StatusCode.INVALID_ARGUMENT),  # its picture
        (pb.DismissRequest(query_key="absent", key="k"), grpc.StatusCode.NOT_FOUND),
        (pb.DismissRequest(image=b"not an image", key="k"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.DismissRequest(image=mosaic(8005), key="k", collection="bad name"), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            service.stub.Dismiss(request, timeout=60)
        assert raised.value.code() == code, (request, raised.value.details())
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.Dismiss(pb.DismissRequest(image=reencoded(picture, 60), key="k"), timeout=60)
    assert "'s own (cosine similarity 0.9" in raised.value.details() and "Delete the key" in raised.value.details()
    assert service.stub.ListDismissals(pb.ListDismissalsRequest(), timeout=10).dismissals == []
    assert check(service, reencoded(picture, 50)).is_duplicate  # nothing blinds the key to its copies


def test_the_entries_against_one_key_are_bounded(start_service, tmp_path):
    service = start_service(*FAST, "--max-dismissals-per-key", "2", data_dir=tmp_path / "d")
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="k", image=mosaic(8010))]), timeout=60))
    first, second = (service.stub.Dismiss(pb.DismissRequest(image=mosaic(n), key="k"), timeout=60) for n in (11, 12))
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.Dismiss(pb.DismissRequest(image=mosaic(13), key="k"), timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "has 2 'not a duplicate' entries, the most one key may hold" in raised.value.details()
    service.stub.RemoveDismissal(pb.RemoveDismissalRequest(id=first.id), timeout=10)
    third = service.stub.Dismiss(pb.DismissRequest(image=mosaic(13), key="k"), timeout=60)
    listed = service.stub.ListDismissals(pb.ListDismissalsRequest(key="k"), timeout=10).dismissals
    assert sorted(entry.id for entry in listed) == sorted([second.id, third.id])
