"""Enroll, Check, Delete and Stats end to end: real gRPC, Triton, LMDB and usearch."""

import io

import grpc
import pytest
from PIL import Image, ImageEnhance

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import RunningService, committed_image_names, encode_jpeg, image_bytes, mosaic, reencoded

NAMES = committed_image_names()
# Stamps and portraits of one shared style, and a wallpaper: unrelated to every reference.
UNRELATED = [
    "gnome-wood.jpg",
    "portrait-portraits-humans-swordsman-3.jpg",
    "stamp-animals-mammals-deer-caribou.jpg",
    "stamp-animals-mammals-camel-dromedary.jpg",
]
# gnome-vnc.jpg is a uniform grey: no descriptor tells such images apart (see docs/quality.md).
REFERENCES = [name for name in NAMES if name not in UNRELATED and name != "gnome-vnc.jpg"]


def transformed(name: str, how: str) -> bytes:
    image = Image.open(io.BytesIO(image_bytes(name))).convert("RGB")
    width, height = image.size
    if how == "recompressed":
        return encode_jpeg(image, quality=40)
    if how == "lightly recompressed":
        return encode_jpeg(image, quality=75)
    if how == "resized":
        return encode_jpeg(image.resize((round(width * 0.6), round(height * 0.6)), Image.Resampling.LANCZOS))
    if how == "cropped":
        return encode_jpeg(image.crop((width // 10, height // 10, width - width // 10, height - height // 10)))
    if how == "mirrored":
        return encode_jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if how == "recoloured":
        return encode_jpeg(ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.2)).enhance(0.6))
    raise ValueError(how)


def enroll(stub, requests: list[pb.EnrollRequest]) -> list[pb.EnrollResult]:
    return list(stub.Enroll(iter(requests), timeout=120))


def check(stub, data: bytes, top_k: int = 3) -> pb.CheckResponse:
    return stub.Check(pb.CheckRequest(image=data, top_k=top_k), timeout=60)


@pytest.fixture(scope="module", params=["usearch", "milvus"])
def enrolled(request, tmp_path_factory):
    """The service with the references enrolled, on each index backend (Milvus Lite for milvus)."""
    flags = []
    if request.param == "milvus":
        uri = request.getfixturevalue("milvus_uri")
        flags = ["--index-backend", "milvus", "--milvus-uri", uri, "--milvus-collection", "check_enroll"]
    service = RunningService(tmp_path_factory.mktemp("enrolled") / "data", *flags).wait_serving()
    service.backend = request.param
    requests = [pb.EnrollRequest(key=f"ref/{n}", image=image_bytes(n), metadata={"file": n}) for n in REFERENCES]
    results = enroll(service.stub, requests)
    assert [r.status for r in results] == [pb.EnrollResult.ENROLLED] * len(REFERENCES)
    yield service
    service.stop()


@pytest.mark.parametrize("how", ["recompressed", "resized", "cropped", "mirrored", "recoloured"])
def test_transformed_copies_find_their_reference(enrolled, how):
    for name in REFERENCES:
        reply = check(enrolled.stub, transformed(name, how))
        best = reply.matches[0]
        assert best.key == f"ref/{name}", f"{how} {name}: nearest is {best.key}"
        assert best.metadata == {"file": name}
        assert reply.matches[1].distance > best.distance
        assert reply.model == "sscd"


@pytest.mark.parametrize("how", ["lightly recompressed", "mirrored"])
def test_light_transforms_are_duplicates_by_the_default_rule(enrolled, how):
    decided = [check(enrolled.stub, transformed(name, how)).is_duplicate for name in REFERENCES]
    assert all(decided), dict(zip(REFERENCES, decided, strict=True))


def test_unrelated_images_are_not_duplicates(enrolled):
    for name in UNRELATED:
        reply = check(enrolled.stub, image_bytes(name))
        assert not reply.is_duplicate, f"{name} taken for {reply.matches[0].key}"
        assert not reply.identical and not any(m.is_duplicate for m in reply.matches)


def test_byte_identical_image_is_found_by_content_hash(enrolled):
    reply = check(enrolled.stub, image_bytes(REFERENCES[0]))
    assert reply.identical and reply.is_duplicate
    assert reply.matches[0].key == f"ref/{REFERENCES[0]}" and reply.matches[0].distance == 0


def test_a_check_right_after_enroll_finds_the_new_image_without_a_rebuild(enrolled):
    new = mosaic(1)
    [result] = enroll(enrolled.stub, [pb.EnrollRequest(key="fresh", image=new)])
    assert result.status == pb.EnrollResult.ENROLLED and result.id > 0
    reply = check(enrolled.stub, reencoded(new))
    assert reply.matches[0].key == "fresh" and not reply.identical
    assert reply.index_generation == 0


def test_reenrolling_a_key(enrolled):
    first, second = mosaic(2), mosaic(3)
    results = enroll(
        enrolled.stub,
        [
            pb.EnrollRequest(key="again", image=first),
            pb.EnrollRequest(key="again", image=first),
            pb.EnrollRequest(key="again", image=second, metadata={"v": "2"}),
        ],
    )
    assert [r.status for r in results] == [pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED, pb.EnrollResult.UPDATED]
    assert results[2].id != results[0].id
    assert check(enrolled.stub, reencoded(second)).matches[0].key == "again"
    assert check(enrolled.stub, reencoded(second)).matches[0].metadata == {"v": "2"}
    assert all(m.key != "again" for m in check(enrolled.stub, reencoded(first), top_k=5).matches[:1])


def test_batches_in_flight_together_commit_and_answer_in_stream_order(enrolled):
    """Forty items over five keys: several batches are hashed at once, and each key ends up
    holding its last image, every answer in order with ids increasing as they were committed."""
    images = [mosaic(100 + number) for number in range(40)]
    requests = [pb.EnrollRequest(key=f"pipe/{n % 5}", image=image) for n, image in enumerate(images)]
    results = enroll(enrolled.stub, requests)
    assert [r.key for r in results] == [r.key for r in requests]
    assert [r.status for r in results] == [pb.EnrollResult.ENROLLED] * 5 + [pb.EnrollResult.UPDATED] * 35
    ids = [r.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 40
    for key_number, image in enumerate(images[-5:]):
        assert check(enrolled.stub, reencoded(image)).matches[0].key == f"pipe/{key_number}"


def test_delete_removes_the_image_from_checks_at_once(enrolled):
    image = mosaic(4)
    enroll(enrolled.stub, [pb.EnrollRequest(key="doomed", image=image)])
    assert check(enrolled.stub, reencoded(image)).matches[0].key == "doomed"
    enrolled.stub.Delete(pb.DeleteRequest(key="doomed"), timeout=10)
    assert all(m.key != "doomed" for m in check(enrolled.stub, reencoded(image), top_k=10).matches)
    assert all(m.key != "doomed" for m in check(enrolled.stub, image, top_k=10).matches)
    with pytest.raises(grpc.RpcError) as raised:
        enrolled.stub.Delete(pb.DeleteRequest(key="doomed"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "doomed" in raised.value.details()


def test_a_bad_item_is_invalid_and_does_not_end_the_stream(enrolled):
    results = enroll(
        enrolled.stub,
        [
            pb.EnrollRequest(key="broken", image=b"not an image"),
            pb.EnrollRequest(key="", image=mosaic(5)),
            pb.EnrollRequest(key="x" * 600, image=mosaic(5)),
            pb.EnrollRequest(key="fine", image=mosaic(6)),
        ],
    )
    assert [r.status for r in results] == [pb.EnrollResult.INVALID] * 3 + [pb.EnrollResult.ENROLLED]
    assert "not in a supported format" in results[0].error
    assert "key is empty" in results[1].error and "at most 511" in results[2].error
    assert [r.key for r in results] == ["broken", "", "x" * 600, "fine"]


def test_stats_report_the_state(enrolled):
    stats = enrolled.stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.records >= len(REFERENCES)
    if enrolled.backend == "usearch":  # no snapshot: every record is in the live part
        assert stats.unindexed_records == stats.records and stats.index_generation == 0 and stats.index_size == 0
    else:  # every record pushed to the collection
        assert stats.unindexed_records == 0 and stats.index_size == stats.records
    assert (stats.model, stats.input_size, stats.views_per_check, stats.views_per_enroll) == ("sscd", 224, 1, 1)
    assert stats.bytes_on_disk > 0


def test_bad_check_requests(enrolled):
    for request, reason in [
        (pb.CheckRequest(image=b"", top_k=1), "empty"),
        (pb.CheckRequest(image=image_bytes(REFERENCES[0]), top_k=1000), "top_k must be between 1 and 100"),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            enrolled.stub.Check(request, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in raised.value.details()


def test_a_store_of_another_model_is_refused_with_failed_precondition(tmp_path, start_service):
    data_dir = tmp_path / "store"
    first = start_service(data_dir=data_dir)
    enroll(first.stub, [pb.EnrollRequest(key="a", image=mosaic(7))])
    first.stop()
    other = start_service("--model", "sscd_distilled", data_dir=data_dir)
    for call in (
        lambda: enroll(other.stub, [pb.EnrollRequest(key="b", image=mosaic(8))]),
        lambda: check(other.stub, mosaic(8)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'sscd@224'" in raised.value.details() and "'sscd_distilled@224'" in raised.value.details()
