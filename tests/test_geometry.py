"""The geometric check: ORB keypoints stored at enrolment, RANSAC inliers at check time."""

import io

import numpy as np
from PIL import Image

from service.media.geometry import MIN_INLIERS, inliers, keypoints, pack, unpack
from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import encode_jpeg, image_bytes, mosaic

PICTURE = "portrait-portraits-monsters-falcon.jpg"
OTHER = "portrait-portraits-humans-mage-light.jpg"


def rgb(name: str) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(name))).convert("RGB")


def test_keypoints_survive_packing():
    points = np.random.default_rng(0).random((7, 2), dtype=np.float32) * 500
    descriptors = np.random.default_rng(1).integers(0, 256, (7, 32), dtype=np.uint8)
    unpacked_points, unpacked_descriptors = unpack(pack(points, descriptors))
    assert np.array_equal(unpacked_points, points) and np.array_equal(unpacked_descriptors, descriptors)
    assert unpack(keypoints(Image.new("RGB", (64, 64), "grey")))[0].shape == (0, 2)  # a blank has none


def test_crops_and_mirrors_share_a_homography_and_other_pictures_do_not():
    stored = keypoints(rgb(PICTURE))
    picture = rgb(PICTURE)
    assert inliers(picture.crop((60, 40, 380, 400)), stored) > 5 * MIN_INLIERS
    assert inliers(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT), stored) > 5 * MIN_INLIERS
    assert inliers(rgb(OTHER), stored) < MIN_INLIERS
    assert inliers(picture, b"") == 0


def test_the_service_runs_the_check_for_borderline_scores(start_service):
    # No score reaches the threshold, and every one is within the band: geometry decides all
    # (confirmation under the threshold, which would find the crop first, is off).
    service = start_service("--margin-threshold", "0.99", "--geometric-band", "10", "--verification-reach", "0")
    [result] = service.stub.Enroll(iter([pb.EnrollRequest(key="falcon", image=image_bytes(PICTURE))]), timeout=60)
    assert result.status == pb.EnrollResult.ENROLLED
    cropped = encode_jpeg(rgb(PICTURE).crop((60, 40, 380, 400)))
    reply = service.stub.Check(pb.CheckRequest(image=cropped), timeout=60)
    assert reply.matches[0].key == "falcon" and reply.matches[0].inliers >= MIN_INLIERS and reply.is_duplicate
    assert reply.decided_by == "geometric"
    unrelated = service.stub.Check(pb.CheckRequest(image=image_bytes(OTHER)), timeout=60)
    assert 0 <= unrelated.matches[0].inliers < MIN_INLIERS and not unrelated.is_duplicate


def test_without_a_band_the_check_never_runs(stub):
    # Something enrolled, and a query that is not a duplicate of it: with a band the check would run.
    request = pb.EnrollRequest(key="geometry/falcon", image=image_bytes(PICTURE))
    [result] = stub.Enroll(iter([request]), timeout=60)
    assert result.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED)
    reply = stub.Check(pb.CheckRequest(image=mosaic(4242), top_k=3), timeout=60)
    assert reply.matches and not reply.is_duplicate
    assert all(match.inliers == -1 for match in reply.matches)
