"""A client that sends faster than the service hashes is held back, not buffered without bound."""

import threading
import time

import numpy as np
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import encode_jpeg, scrape

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
    read_ahead = []  # the service's own count of what it read and has not taken, sampled
    finished = threading.Event()

    def requests():
        nonlocal sent
        for number in range(COUNT):
            with lock:
                sent += 1
            yield pb.EnrollRequest(key=f"flow/{number}", image=images[number % len(images)])

    def sample():
        while not finished.is_set():
            samples = scrape(service.metrics_port)
            read_ahead.append(
                (samples[("neardup_stream_read_ahead_requests", ())], samples[("neardup_stream_read_ahead_bytes", ())])
            )
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    ahead = []
    answered = 0
    try:
        for result in service.stub.Enroll(requests(), timeout=300):
            assert result.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED)
            answered += 1
            with lock:
                ahead.append(sent - answered)
    finally:
        finished.set()
        sampler.join()
    assert answered == COUNT
    # The client sends faster than the service hashes: the service's read-ahead fills to its
    # window and never beyond it, and is empty once the stream is answered.
    most = max(count for count, _ in read_ahead)
    assert WINDOW // 2 <= most <= WINDOW, most
    assert max(size for _, size in read_ahead) <= WINDOW * (max(map(len, images)) + len("flow/300"))
    assert scrape(service.metrics_port)[("neardup_stream_read_ahead_bytes", ())] == 0
    # What the client got to send beyond that sits in gRPC's flow-control windows, which grow
    # with the measured bandwidth: bounded, far from the whole stream.
    assert max(ahead) < COUNT / 2, max(ahead)


def test_a_stream_broken_with_requests_read_ahead_leaves_nothing_counted(start_service):
    service = start_service("--enroll-views", "1", "--enroll-window", str(WINDOW), "--enroll-batch", str(BATCH))
    images = [noisy_jpeg(i) for i in range(4)]
    stream = service.stub.Enroll(
        (pb.EnrollRequest(key=f"broken/{n}", image=images[n % len(images)]) for n in range(COUNT)), timeout=300
    )
    next(stream)
    assert scrape(service.metrics_port)[("neardup_stream_read_ahead_requests", ())] > 0
    stream.cancel()
    deadline = time.monotonic() + 30
    while scrape(service.metrics_port)[("neardup_stream_read_ahead_bytes", ())] and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = scrape(service.metrics_port)
    assert samples[("neardup_stream_read_ahead_requests", ())] == 0
    assert samples[("neardup_stream_read_ahead_bytes", ())] == 0
