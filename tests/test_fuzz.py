"""Property-based fuzzing, bounded in examples and time: the decode path never raises anything but
ImageError, and no request field or request bytes get a status outside the documented ones."""

import io

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.media.imaging import ImageError, Limits, decode_canvas
from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import health_status, image_bytes

PICTURE = Image.open(io.BytesIO(image_bytes("gnome-wood.jpg"))).convert("RGB").resize((48, 36))


def encoded(image_format: str) -> bytes:
    out = io.BytesIO()
    PICTURE.save(out, image_format)
    return out.getvalue()


SEEDS = [encoded(name) for name in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")]
BOUNDED = settings(max_examples=300, deadline=None, derandomize=True)
THROUGH_THE_SERVICE = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def damaged_images(draw) -> bytes:
    """A valid small image with bytes flipped, cut off, or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@BOUNDED
@given(damaged_images())
def test_decode_gives_a_canvas_or_image_error(data):
    try:
        canvas = decode_canvas(data, 64, Limits(min_side=1))
    except ImageError as error:
        assert str(error)
    else:
        assert canvas.shape == (64, 64, 3)


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
INT32 = st.integers(-(2**31), 2**31 - 1)
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, f"{error.code()}: {error.details()}"
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module", autouse=True)
def serving_after(scratch_service):
    yield
    assert health_status(scratch_service.channel) == health_pb2.HealthCheckResponse.SERVING


@THROUGH_THE_SERVICE
@given(views=INT32, top_k=INT32, key=TEXT, metadata=st.dictionaries(TEXT, TEXT, max_size=4), image=damaged_images())
def test_request_fields(scratch_service, views, top_k, key, metadata, image):
    status_of(lambda: scratch_service.stub.Hash(pb.HashRequest(image=image, views=views), timeout=60))
    status_of(lambda: scratch_service.stub.Check(pb.CheckRequest(image=image, top_k=top_k), timeout=60))
    status_of(lambda: scratch_service.stub.Delete(pb.DeleteRequest(key=key), timeout=60))
    [result] = scratch_service.stub.Enroll(
        iter([pb.EnrollRequest(key=f"fuzz/{key}", image=image, metadata=metadata)]), timeout=60
    )
    assert result.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UPDATED, pb.EnrollResult.UNCHANGED) or (
        result.status == pb.EnrollResult.INVALID and result.error
    )


@THROUGH_THE_SERVICE
@given(method=st.sampled_from(["Hash", "Check", "Delete", "Stats"]), data=st.binary(max_size=64))
def test_request_bytes(scratch_service, method, data):
    status_of(lambda: scratch_service.channel.unary_unary(f"/neardup.v1.NearDup/{method}")(data, timeout=60))
