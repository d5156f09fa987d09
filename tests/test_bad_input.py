"""Bad input gets INVALID_ARGUMENT (or RESOURCE_EXHAUSTED) with a reason, and the service keeps serving."""

import io
import struct
import zlib

import grpc
import pytest
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import image_bytes


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, image_format: str) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format)
    return out.getvalue()


JPEG = image_bytes("gnome-adwaita.jpg")
BAD_IMAGES = {
    "empty": (b"", "empty"),
    "random bytes": (bytes(range(256)) * 16, "not in a supported format"),
    "truncated JPEG": (JPEG[: len(JPEG) // 2], "truncated"),
    "1x1 image": (encoded(Image.new("RGB", (1, 1)), "PNG"), "at least 8 px"),
    "100000 x 100000 header": (png_header_claiming(100_000, 100_000), "too large"),
    "9000 x 9000 header": (png_header_claiming(9_000, 9_000), "over the 64 Mpx limit"),
    "ICO format": (encoded(Image.new("RGB", (64, 64), "red"), "ICO"), "not in a supported format"),
    "PDF": (b"%PDF-1.4\n" + b"0" * 500, "not in a supported format"),
}


@pytest.mark.parametrize("case", BAD_IMAGES, ids=list(BAD_IMAGES))
def test_bad_image_is_invalid_argument_with_a_reason_and_the_service_keeps_serving(stub, case):
    data, reason = BAD_IMAGES[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Hash(pb.HashRequest(image=data), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in raised.value.details()
    assert len(stub.Hash(pb.HashRequest(image=JPEG), timeout=60).feature) == 512


def test_request_over_the_size_limit_is_resource_exhausted(stub):
    # The session's service allows 8 MiB requests.
    with pytest.raises(grpc.RpcError) as raised:
        stub.Hash(pb.HashRequest(image=JPEG + b"\0" * (9 << 20)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(stub.Hash(pb.HashRequest(image=JPEG), timeout=60).feature) == 512


def test_other_image_formats_and_modes_are_accepted(stub):
    picture = Image.open(io.BytesIO(JPEG))
    variants = {
        "PNG RGBA": encoded(picture.convert("RGBA"), "PNG"),
        "WebP": encoded(picture, "WEBP"),
        "GIF palette": encoded(picture.convert("P"), "GIF"),
        "BMP grey": encoded(picture.convert("L"), "BMP"),
        "TIFF CMYK": encoded(picture.convert("CMYK"), "TIFF"),
    }
    for name, data in variants.items():
        response = stub.Hash(pb.HashRequest(image=data), timeout=60)
        assert len(response.feature) == 512, name
