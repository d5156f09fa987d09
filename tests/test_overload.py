"""Overload: past the limits, calls are answered RESOURCE_EXHAUSTED at once; admitted ones are
answered correctly; memory stays bounded; an idle Enroll stream is closed."""

import io
import threading
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import image_bytes, mosaic, reencoded
from tools.service_process import peak_resident_mb, reset_peak_resident, resident_mb, wait_for

FAST = ("--enroll-views", "1", "--check-views", "1")


def burst(calls: list, timeout: float = 60) -> list[tuple[grpc.StatusCode, object]]:
    """Starts every call at once (futures); returns (status, response) each."""
    answered: list = [None] * len(calls)
    done = threading.Event()
    left = [len(calls)]
    lock = threading.Lock()

    def finish(index: int, future) -> None:
        error = future.exception()
        answered[index] = (error.code(), None) if error else (grpc.StatusCode.OK, future.result())
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    for index, call in enumerate(calls):
        call().add_done_callback(lambda future, index=index: finish(index, future))
    assert done.wait(timeout)
    return answered


def views_sent(service) -> float:
    """Images the service has sent to Triton, by its metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).read().decode()
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "neardup_triton_batch_images_sum"
    )


def test_calls_past_the_limit_are_refused_at_once_and_the_admitted_ones_answered_right(start_service):
    service = start_service(*FAST, "--max-concurrent-calls", "2")
    images = {f"o/{i}": mosaic(500 + i) for i in range(4)}
    list(service.stub.Enroll(iter(pb.EnrollRequest(key=k, image=v) for k, v in images.items()), timeout=60))
    queries = [(key, reencoded(image)) for key, image in images.items()] * 15
    memory_before = resident_mb(service.process.pid)
    for _ in range(3):
        views_before = views_sent(service)
        answers = burst(
            [lambda q=q: service.stub.Check.future(pb.CheckRequest(image=q[1]), timeout=30) for q in queries]
        )
        refused = [code for code, _ in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        answered = zip(queries, answers, strict=True)
        admitted = [(key, response) for (key, _), (code, response) in answered if code == grpc.StatusCode.OK]
        assert len(refused) + len(admitted) == len(queries)
        assert refused and admitted
        # At once: a refused call does no work (each admitted one is one view, the refused none),
        # and does not wait for room, or it would have been admitted. Counted, not timed: timings
        # side by side failed on a busy machine, as did the order of the first answers.
        assert views_sent(service) - views_before == len(admitted)
        assert all(response.is_duplicate and response.matches[0].key == key for key, response in admitted)
    assert resident_mb(service.process.pid) - memory_before < 100
    assert "overloaded" in service.output()


def large_png(number: int) -> bytes:
    """A 12 Mpx PNG of a mosaic (about 48 MB once decoded)."""
    from PIL import Image

    picture = Image.open(io.BytesIO(mosaic(number))).resize((4000, 3000), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


def test_a_burst_of_large_images_stays_within_the_decode_budget_and_is_given_back(start_service):
    """Three callers Check 12 Mpx PNGs at once, beside enrolled pictures that send each Check on to
    verification and the regions: the process's peak stays within the decode budget over what it
    held before, and what the burst took is given back after. (Each Check's decoded picture used
    to be kept for good, decodes held 1.2-2x what the budget reserved, and freed blocks stayed with
    the process: 11 GB resident after 40 s of 30 Mpx PNGs against a 1.5 GB budget.)"""
    budget_mb = 200
    service = start_service(*FAST, "--decode-budget-bytes", str(budget_mb * 10**6))
    list(service.stub.Enroll(iter(pb.EnrollRequest(key=f"b/{i}", image=mosaic(800 + i)) for i in range(6)), timeout=60))
    pictures = [large_png(900 + i) for i in range(3)]
    service.stub.Check(pb.CheckRequest(image=pictures[0]), timeout=60)  # the codecs and threads in place
    pid = service.process.pid
    reset_peak_resident(pid)
    before = resident_mb(pid)
    codes: list[grpc.StatusCode] = []

    def caller(picture: bytes) -> None:
        for _ in range(4):
            try:
                service.stub.Check(pb.CheckRequest(image=picture), timeout=120)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())

    callers = [threading.Thread(target=caller, args=(picture,)) for picture in pictures]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED} and grpc.StatusCode.OK in codes
    assert peak_resident_mb(pid) - before < budget_mb + 100
    wait_for(lambda: resident_mb(pid) - before < 30, 15, "the burst's memory to be given back")


def test_views_past_the_triton_queue_are_refused_but_enroll_waits(start_service):
    service = start_service(*FAST, "--max-triton-queue", "10")
    jpeg = image_bytes("gnome-wood.jpg")
    answers = burst([lambda: service.stub.Hash.future(pb.HashRequest(image=jpeg, views=10), timeout=60)] * 8)
    codes = [code for code, _ in answers]
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # An Enroll stream of 40 items (3 batches over the queue's 10 views) waits for room instead.
    requests = (pb.EnrollRequest(key=f"q/{i}", image=mosaic(600 + i)) for i in range(40))
    assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(requests, timeout=120))


def test_an_idle_enroll_stream_is_closed_after_answering_what_it_sent(start_service):
    service = start_service(*FAST, "--stream-idle-s", "1")

    def requests():
        yield pb.EnrollRequest(key="idle/1", image=mosaic(700))
        time.sleep(5)
        yield pb.EnrollRequest(key="idle/2", image=mosaic(701))

    results, error = [], None
    try:
        for result in service.stub.Enroll(requests(), timeout=30):
            results.append(result)
    except grpc.RpcError as raised:
        error = raised
    assert [r.key for r in results] == ["idle/1"] and results[0].status == pb.EnrollResult.ENROLLED
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no request for 1 s" in error.details()


def test_health_watch_streams_have_an_allowance_of_their_own(start_service):
    """Watch is open to anyone (auth or not) and held open by its caller: past the allowance one more
    is refused, while probes and Checks go on as before."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.api.interceptors import WATCHERS

    service = start_service("--enroll-views", "1", "--check-views", "1")
    health = health_pb2_grpc.HealthStub(service.channel)
    request = health_pb2.HealthCheckRequest(service="neardup.v1.NearDup")
    watching = [health.Watch(request, timeout=60) for _ in range(WATCHERS)]
    try:
        assert all(next(stream).status == health_pb2.HealthCheckResponse.SERVING for stream in watching)
        with pytest.raises(grpc.RpcError) as refused:
            next(health.Watch(request, timeout=60))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert service.stub.Check(pb.CheckRequest(image=mosaic(31)), timeout=60).model
    finally:
        for stream in watching:
            stream.cancel()
