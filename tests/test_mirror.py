"""Mirror images as a policy (--mirror, and per collection with SetCollection): by default a mirror
image of an enrolled picture is its duplicate; with `distinct` it is another picture, while the
picture itself, re-encoded or captioned, still is."""

import grpc
import pytest
from PIL import Image, ImageDraw, ImageOps

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import encode_jpeg, picture

FAST = ("--enroll-views", "1", "--check-views", "1")


def exit_sign(pointing: str = "right") -> Image.Image:
    """A sign with an arrow pointing right (or left or up: look-alikes, not mirror images) over a
    photograph (an asymmetric picture)."""
    sign = ImageOps.fit(picture("portrait-portraits-humans-swordsman-3.jpg"), (480, 320))
    draw = ImageDraw.Draw(sign)
    if pointing == "right":
        draw.rectangle((60, 130, 300, 190), fill=(20, 120, 40))
        draw.polygon([(300, 90), (420, 160), (300, 230)], fill=(20, 120, 40))
    elif pointing == "left":
        draw.rectangle((180, 130, 420, 190), fill=(20, 120, 40))
        draw.polygon([(180, 90), (60, 160), (180, 230)], fill=(20, 120, 40))
    else:
        draw.rectangle((210, 140, 270, 300), fill=(20, 120, 40))
        draw.polygon([(170, 140), (240, 30), (310, 140)], fill=(20, 120, 40))
    draw.rectangle((40, 30, 200, 80), fill="white")
    draw.text((60, 45), "EXIT", fill="black")
    return sign


def captioned(sign: Image.Image) -> Image.Image:
    shown = sign.copy()
    draw = ImageDraw.Draw(shown)
    draw.rectangle((0, 280, 480, 320), fill="black")
    draw.text((20, 292), "this way to the car park", fill="white")
    return shown


def check(service, image: Image.Image) -> pb.CheckResponse:
    return service.stub.Check(pb.CheckRequest(image=encode_jpeg(image), top_k=3), timeout=60)


def test_distinct_separates_a_sign_from_its_mirror_and_keeps_its_copies(start_service, tmp_path):
    sign = exit_sign()
    for mirror, data_dir in (("duplicate", tmp_path / "a"), ("distinct", tmp_path / "b")):
        data_dir.mkdir()
        service = start_service(*FAST, "--mirror", mirror, data_dir=data_dir / "data")
        [enrolled] = service.stub.Enroll(iter([pb.EnrollRequest(key="exit", image=encode_jpeg(sign))]), timeout=60)
        assert enrolled.status == pb.EnrollResult.ENROLLED, enrolled.error
        mirrored = check(service, ImageOps.mirror(sign))
        if mirror == "duplicate":  # as before: a mirror image is a duplicate
            assert mirrored.is_duplicate and mirrored.matches[0].key == "exit", mirrored
        else:
            assert not mirrored.is_duplicate and mirrored.decided_by == "mirror", mirrored
            assert mirrored.matches[0].key == "exit"  # still listed, as the nearest
        for copy in (sign, captioned(sign)):
            reply = check(service, copy)
            assert reply.is_duplicate and reply.matches[0].key == "exit", (mirror, reply)
        service.stop()


def test_a_collection_can_hold_mirror_images_distinct(start_service, tmp_path):
    service = start_service(*FAST)
    stats = service.stub.SetCollection(pb.SetCollectionRequest(collection="signs", mirror="distinct"), timeout=10)
    assert stats.own_settings and stats.mirror == "distinct" and stats.rule == "margin"  # the service's rule stays
    sign = encode_jpeg(exit_sign())
    requests = [pb.EnrollRequest(key="exit", image=sign, collection="signs"), pb.EnrollRequest(key="exit", image=sign)]
    assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(iter(requests), timeout=60))
    mirrored = check(service, ImageOps.mirror(exit_sign()))
    duplicates = {match.collection for match in mirrored.matches if match.is_duplicate}
    assert mirrored.is_duplicate and duplicates == {""}, mirrored  # the default collection's only
    with pytest.raises(grpc.RpcError) as refused:
        service.stub.SetCollection(pb.SetCollectionRequest(collection="signs", mirror="sideways"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mirror 'sideways' is not one of duplicate, distinct" in refused.value.details()
    stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
    assert {c.name: c.mirror for c in stats.collections} == {"": "duplicate", "signs": "distinct"}
