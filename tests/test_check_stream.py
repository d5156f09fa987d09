"""CheckStream: many Checks on one stream, answered in order, a bad item answered with its error."""

import time

import grpc
import pytest
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import encode_jpeg, mosaic, reencoded

TRUNCATED_VARINT = b"\x10\xff\xff"  # a CheckRequest whose top_k never ends


def tiny() -> bytes:
    return encode_jpeg(Image.new("RGB", (4, 4), "red"))


BAD = {  # position -> (request bytes, what its error says)
    7: (pb.CheckRequest(image=b"not an image").SerializeToString(), "not in a supported format"),
    18: (pb.CheckRequest(image=b"").SerializeToString(), "empty"),
    29: (pb.CheckRequest(image=mosaic(6000), top_k=1000).SerializeToString(), "top_k must be between 1 and 100"),
    40: (pb.CheckRequest(image=mosaic(6000)[:300]).SerializeToString(), ""),
    51: (pb.CheckRequest(image=tiny()).SerializeToString(), "at least"),
    62: (TRUNCATED_VARINT, "not a valid neardup.v1.CheckRequest"),
    73: (pb.CheckRequest(image=b"\x89PNG\r\n\x1a\n" + bytes(40)).SerializeToString(), ""),
    84: (pb.CheckRequest(image=b"GIF89a").SerializeToString(), ""),
    90: (pb.CheckRequest(image=b"RIFF\x00\x00\x00\x00WEBP").SerializeToString(), ""),
    99: (pb.CheckRequest(image=b"\xff\xd8\xff").SerializeToString(), ""),
}


@pytest.fixture(scope="module")
def pictures(scratch_service) -> list[bytes]:
    images = [mosaic(6100 + n) for n in range(15)]
    requests = (pb.EnrollRequest(key=f"checkstream/{n}", image=image) for n, image in enumerate(images))
    assert all(r.status == pb.EnrollResult.ENROLLED for r in scratch_service.stub.Enroll(requests, timeout=120))
    return images


def test_a_hundred_checks_with_ten_bad_ones_get_a_hundred_answers_in_order(scratch_service, pictures):
    serialized = [
        BAD[n][0] if n in BAD else pb.CheckRequest(image=reencoded(pictures[n % 15]), top_k=2).SerializeToString()
        for n in range(100)
    ]
    stream = scratch_service.channel.stream_stream(
        "/neardup.v1.NearDup/CheckStream", response_deserializer=pb.CheckResponse.FromString
    )
    answers = list(stream(iter(serialized), timeout=300))
    assert len(answers) == 100
    for n, answer in enumerate(answers):
        if n in BAD:
            assert answer.error.startswith("INVALID_ARGUMENT: ") and BAD[n][1] in answer.error, (n, answer.error)
            assert not answer.matches and not answer.is_duplicate
        else:
            assert not answer.error, (n, answer.error)
            assert answer.matches[0].key == f"checkstream/{n % 15}" and answer.is_duplicate, n
            assert len(answer.matches) == 2


def test_the_answers_are_the_ones_check_gives(scratch_service, pictures):
    queries = [pb.CheckRequest(image=reencoded(image, 60), top_k=3) for image in pictures[:5]]
    streamed = list(scratch_service.stub.CheckStream(iter(queries), timeout=120))
    for query, answer in zip(queries, streamed, strict=True):
        single = scratch_service.stub.Check(query, timeout=60)
        assert [m.key for m in answer.matches] == [m.key for m in single.matches]
        assert answer.score == pytest.approx(single.score) and answer.is_duplicate == single.is_duplicate


def test_an_empty_stream_gets_no_answers_and_a_passed_deadline_ends_the_stream(scratch_service):
    assert list(scratch_service.stub.CheckStream(iter([]), timeout=30)) == []
    with pytest.raises(grpc.RpcError) as raised:  # a status for the stream, not an item's error
        list(scratch_service.stub.CheckStream(iter(_slowly(pb.CheckRequest(image=mosaic(6200)))), timeout=1.5))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _slowly(request: pb.CheckRequest):
    for _ in range(5):
        yield request
        time.sleep(1)


@pytest.mark.parametrize("method", ["CheckStream", "Enroll"])
def test_each_answer_comes_without_waiting_for_the_next_request(scratch_service, pictures, method):
    """A caller that sends one request, reads its answer, then sends the next (the answer used to
    wait for a next request that never came: the caller hung until its deadline)."""
    import queue

    outbox: queue.Queue = queue.Queue()

    def requests():
        while (request := outbox.get()) is not None:
            yield request

    make = {
        "CheckStream": lambda n: pb.CheckRequest(image=reencoded(pictures[n])),
        "Enroll": lambda n: pb.EnrollRequest(key=f"ping-pong/{n}", image=mosaic(6300 + n)),
    }[method]
    answers = getattr(scratch_service.stub, method)(requests(), timeout=60)
    try:
        for n in range(3):
            outbox.put(make(n))
            answer = next(answers)
            if method == "CheckStream":
                assert answer.matches[0].key == f"checkstream/{n}"
            else:
                assert (answer.key, answer.status) == (f"ping-pong/{n}", pb.EnrollResult.ENROLLED)
    finally:
        outbox.put(None)
