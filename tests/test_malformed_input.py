"""The malformed-input suite: damaged and hostile images, keys, metadata, views, top_k and raw
protobuf bytes through every RPC that takes them. Each gets its documented status (never UNKNOWN
or INTERNAL), the reason is in the message, and the service is SERVING after."""

import io
import struct
import zlib

import grpc
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import health_status, image_bytes

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
PICTURE = Image.open(io.BytesIO(image_bytes("gnome-adwaita.jpg"))).convert("RGB").resize((160, 120))


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\0\0\0\0" + struct.pack("<HH", width, height)


def animated(image_format: str) -> bytes:
    frames = [PICTURE, PICTURE.rotate(90), PICTURE.convert("L").convert("RGB")]
    return encoded(frames[0], image_format, save_all=True, append_images=frames[1:])


FORMATS = {name: encoded(PICTURE, name) for name in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")}
# name -> (bytes, expected status, a phrase of the reason when refused)
IMAGES: dict[str, tuple[bytes, grpc.StatusCode, str]] = {
    f"{name} cut at {fraction:.0%}": (data[: max(6, int(len(data) * fraction))], INVALID, "")
    for name, data in FORMATS.items()
    for fraction in (0.02, 0.1, 0.5, 0.9)
}
IMAGES |= {
    "empty": (b"", INVALID, "empty"),
    "zero bytes": (b"\0" * 1000, INVALID, "not in a supported format"),
    "random bytes": (bytes(range(256)) * 16, INVALID, "not in a supported format"),
    "PNG magic then JPEG body": (b"\x89PNG\r\n\x1a\n" + FORMATS["JPEG"][8:], INVALID, ""),
    "JPEG magic then PNG body": (b"\xff\xd8\xff\xe0" + FORMATS["PNG"][4:], INVALID, ""),
    "PNG claiming 100000 x 100000": (png_claiming(100_000, 100_000), INVALID, "too large"),
    "PNG claiming 9000 x 9000": (png_claiming(9_000, 9_000), INVALID, "Mpx limit"),
    "BMP claiming 50000 x 50000": (bmp_claiming(50_000, 50_000), INVALID, ""),
    "GIF claiming 65535 x 65535": (gif_claiming(65_535, 65_535), INVALID, ""),
    "16-bit PNG, 6000 x 6000": (encoded(Image.new("I;16", (6000, 6000)), "PNG"), INVALID, "MB limit per image"),
    "1 x 1": (encoded(Image.new("RGB", (1, 1)), "PNG"), INVALID, "at least 8 px"),
    "7 x 300": (encoded(Image.new("RGB", (7, 300)), "PNG"), INVALID, "at least 8 px"),
    "ICO": (encoded(Image.new("RGB", (64, 64), "red"), "ICO"), INVALID, "not in a supported format"),
    "PDF": (b"%PDF-1.4\n" + b"0" * 500, INVALID, "not in a supported format"),
    "SVG": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', INVALID, "not in a supported"),
    "16-bit PNG, 64 x 48": (encoded(PICTURE.convert("L").convert("I").convert("I;16"), "PNG"), OK, ""),
    "palette PNG": (encoded(PICTURE.convert("P"), "PNG"), OK, ""),
    "CMYK JPEG": (encoded(PICTURE.convert("CMYK"), "JPEG"), OK, ""),
    "1-bit BMP": (encoded(PICTURE.convert("1"), "BMP"), OK, ""),
    "grey and alpha PNG": (encoded(PICTURE.convert("LA"), "PNG"), OK, ""),
    "animated GIF": (animated("GIF"), OK, ""),
    "animated WebP": (animated("WEBP"), OK, ""),
    "multi-page TIFF": (animated("TIFF"), OK, ""),
    "8 x 8": (encoded(PICTURE.resize((8, 8)), "PNG"), OK, ""),
}


def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


@pytest.fixture(autouse=True, scope="module")
def still_serving_after(scratch_service):
    yield
    assert health_status(scratch_service.channel) == health_pb2.HealthCheckResponse.SERVING


def test_at_least_forty_distinct_images():
    assert len(IMAGES) >= 40 and len(set(data for data, _, _ in IMAGES.values())) == len(IMAGES)


@pytest.mark.parametrize("case", IMAGES, ids=list(IMAGES))
def test_every_image_rpc_gives_the_documented_status(scratch_service, case):
    data, expected, reason = IMAGES[case]
    for rpc, call in (
        ("Hash", lambda: scratch_service.stub.Hash(pb.HashRequest(image=data), timeout=60)),
        ("Check", lambda: scratch_service.stub.Check(pb.CheckRequest(image=data), timeout=60)),
    ):
        code, details = status_of(call)
        assert code == expected, f"{rpc}: {code} {details}"
        assert reason in details, f"{rpc}: {details}"
    [result] = scratch_service.stub.Enroll(iter([pb.EnrollRequest(key=f"malformed/{case}", image=data)]), timeout=60)
    want = pb.EnrollResult.INVALID if expected == INVALID else pb.EnrollResult.ENROLLED
    assert (result.status, result.key) == (want, f"malformed/{case}"), result.error
    assert reason in result.error


REQUESTS = {
    "views 3": (lambda s: s.Hash(pb.HashRequest(image=FORMATS["JPEG"], views=3), timeout=30), INVALID, "multiple"),
    "views -1": (lambda s: s.Hash(pb.HashRequest(image=FORMATS["JPEG"], views=-1), timeout=30), INVALID, "views"),
    "views 200": (lambda s: s.Hash(pb.HashRequest(image=FORMATS["JPEG"], views=200), timeout=30), INVALID, "at most"),
    "views 2^31-10": (
        lambda s: s.Hash(pb.HashRequest(image=FORMATS["JPEG"], views=2**31 - 8), timeout=30),
        INVALID,
        "at most",
    ),
    "top_k -1": (lambda s: s.Check(pb.CheckRequest(image=FORMATS["JPEG"], top_k=-1), timeout=30), INVALID, "top_k"),
    "top_k 2^31-1": (
        lambda s: s.Check(pb.CheckRequest(image=FORMATS["JPEG"], top_k=2**31 - 1), timeout=30),
        INVALID,
        "",
    ),
    "Delete, empty key": (lambda s: s.Delete(pb.DeleteRequest(key=""), timeout=30), INVALID, "key is empty"),
    "Delete, 600-byte key": (lambda s: s.Delete(pb.DeleteRequest(key="k" * 600), timeout=30), INVALID, "at most 511"),
    "Delete, key with NUL": (lambda s: s.Delete(pb.DeleteRequest(key="a\0b"), timeout=30), INVALID, "NUL"),
    "Delete, key not NFC": (lambda s: s.Delete(pb.DeleteRequest(key="cafe\u0301"), timeout=30), INVALID, "NFC"),
    "Delete, absent key": (
        lambda s: s.Delete(pb.DeleteRequest(key="never/enrolled"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
}


@pytest.mark.parametrize("case", REQUESTS, ids=list(REQUESTS))
def test_bad_request_fields(scratch_service, case):
    call, expected, reason = REQUESTS[case]
    code, details = status_of(lambda: call(scratch_service.stub))
    assert (code, reason in details) == (expected, True), details


def raw(channel: grpc.Channel, method: str):
    return channel.unary_unary(f"/neardup.v1.NearDup/{method}")  # requests and answers as bytes


INVALID_UTF8_KEY = b"\x0a\x02\xff\xfe"  # field 1 (key), a string of 2 bytes that are not UTF-8
RAW = {
    "Delete: key not UTF-8": ("Delete", INVALID_UTF8_KEY),
    "Check: truncated varint": ("Check", b"\x10\xff\xff"),
    "Hash: length past the end": ("Hash", b"\x0a\x7f\x00"),
    "Check: a group that never ends": ("Check", b"\x0b"),
    "Stats: garbage": ("Stats", b"\xff\xff\xff\xff"),
}


@pytest.mark.parametrize("case", RAW, ids=list(RAW))
def test_bytes_that_are_not_a_message_are_invalid_argument(scratch_service, case):
    method, data = RAW[case]
    code, details = status_of(lambda: raw(scratch_service.channel, method)(data, timeout=30))
    assert code == INVALID and "not a valid neardup.v1." in details, details


def test_bad_enroll_items_are_invalid_results_and_the_stream_goes_on(scratch_service):
    """100 items, 10 bad ones of every kind scattered through: 100 results in order."""
    good = FORMATS["JPEG"]
    bad = {
        7: pb.EnrollRequest(key="", image=good),
        15: pb.EnrollRequest(key="stream/cut", image=FORMATS["PNG"][:200]),
        23: pb.EnrollRequest(key="stream/long-key-" + "k" * 600, image=good),
        31: pb.EnrollRequest(key="stream/meta-count", image=good, metadata={str(i): "v" for i in range(100)}),
        42: pb.EnrollRequest(key="stream/meta-size", image=good, metadata={"note": "x" * 20_000}),
        50: pb.EnrollRequest(key="stream/empty", image=b""),
        64: pb.EnrollRequest(key="stream/webp", image=FORMATS["WEBP"][:500]),
        77: pb.EnrollRequest(key="stream/bomb", image=png_claiming(100_000, 100_000)),
        88: pb.EnrollRequest(key="stream/ico", image=IMAGES["ICO"][0]),
    }
    serialized = [
        bad[i].SerializeToString() if i in bad else pb.EnrollRequest(key=f"stream/{i}", image=good).SerializeToString()
        for i in range(100)
    ]
    serialized[95] = INVALID_UTF8_KEY + b"\x12\x01\x00"  # an EnrollRequest whose key is not UTF-8
    enroll = scratch_service.channel.stream_stream(
        "/neardup.v1.NearDup/Enroll", response_deserializer=pb.EnrollResult.FromString
    )
    results = list(enroll(iter(serialized), timeout=120))
    assert len(results) == 100
    invalid = [i for i, result in enumerate(results) if result.status == pb.EnrollResult.INVALID]
    assert invalid == sorted([*bad, 95])
    assert all(results[i].error for i in invalid)
    assert "not a valid neardup.v1.EnrollRequest" in results[95].error
    acknowledged = [r for r in results if r.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED)]
    assert [r.key for r in acknowledged] == [f"stream/{i}" for i in range(100) if i not in bad and i != 95]


def test_a_bad_key_is_echoed_by_a_short_prefix_only(scratch_service):
    key = "secret-looking-" + "x" * 480 + "-tail"  # 500 bytes: valid, absent
    code, details = status_of(lambda: scratch_service.stub.Delete(pb.DeleteRequest(key=key), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and key[:40] in details and "-tail" not in details
    [result] = scratch_service.stub.Enroll(iter([pb.EnrollRequest(key=key + "\u0301", image=b"x")]), timeout=30)
    assert result.status == pb.EnrollResult.INVALID and "NFC" in result.error and "-tail" not in result.error
    assert "-tail" not in scratch_service.output()
