"""A client that sends faster than the service hashes is held back, not buffered without bound."""

import threading

import numpy as np
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import encode_jpeg

COUNT = 300
WINDOW, BATCH = 16, 8


def noisy_jpeg(number: int) -> bytes:
    """About 400 KB: large enough that buffering all of them would show."""
    pixels = np.random.default_rng(number).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return encode_jpeg(Image.fromarray(pixels), quality=95)


def test_the_service_reads_only_a_window_ahead_of_its_answers(start_service):
    service = start_service("--enroll-views", "1", "--enroll-window", str(WINDOW), "--enroll-batch", str(BATCH))
    images = [noisy_jpeg(i) for i in range(8)]
    sent = 0
    lock = threading.Lock()

    def requests():
        nonlocal sent
        for number in range(COUNT):
            with lock:
                sent += 1
            yield pb.EnrollRequest(key=f"flow/{number}", image=images[number % len(images)])

    ahead = []
    answered = 0
    for result in service.stub.Enroll(requests(), timeout=300):
        assert result.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED)
        answered += 1
        with lock:
            ahead.append(sent - answered)
    assert answered == COUNT
    # The client could produce all 300 at once; what it got to send was bounded by the window,
    # the two batches in flight, and what gRPC's own flow-control windows hold in transit.
    assert max(ahead) < WINDOW + 2 * BATCH + 48, max(ahead)
    assert max(ahead) < COUNT / 3
