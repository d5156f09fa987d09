"""Interactive calls ahead of bulk work, bulk callers in turn, and one caller's share of the calls
in progress (service/scheduling.py, the Lanes and Admission interceptors)."""

import threading
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from service import scheduling
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import mosaic, reencoded
from tools.service_process import wait_for

FAST = ("--enroll-views", "1", "--check-views", "1")


def queued_views(service) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).read().decode()
    families = text_string_to_metric_families(text)
    return next(s.value for f in families for s in f.samples if s.name == "neardup_triton_queued_views")


def another_caller(service) -> pb_grpc.NearDupStub:
    """A stub on a connection of its own (a process's channels otherwise share one): with auth off,
    another caller to the service."""
    own = grpc.insecure_channel(f"127.0.0.1:{service.port}", options=[("grpc.use_local_subchannel_pool", 1)])
    return pb_grpc.NearDupStub(own)


def test_a_check_is_answered_while_a_bulk_hash_is_with_the_model(start_service):
    """A Hash of 100 views is bulk work; a Check sent while the model runs it is answered before it
    ends (the model has an instance free for interactive requests; with one, the Check waited for
    the whole Hash: 8.7 s medians beside a Hash loop)."""
    service = start_service(*FAST)
    image = mosaic(61)
    list(service.stub.Enroll(iter([pb.EnrollRequest(key="lanes/1", image=image)]), timeout=60))
    bulk = another_caller(service).Hash.future(pb.HashRequest(image=mosaic(62), views=100), timeout=300)
    wait_for(lambda: queued_views(service) >= 100, 30, "the Hash's views to reach the model")
    answer = service.stub.Check(pb.CheckRequest(image=reencoded(image)), timeout=60)
    still_running = not bulk.done()
    assert answer.is_duplicate and answer.matches[0].key == "lanes/1"
    assert still_running, "the Check waited for the bulk Hash to end"
    assert len(bulk.result().feature) == 512


def test_one_callers_calls_leave_room_for_the_others(start_service):
    """One caller opening streams it never finishes gets at most --max-calls-per-caller of them;
    the rest of the service's calls stay open to others (the whole allowance used to be taken: every
    other caller, Stats included, RESOURCE_EXHAUSTED for minutes)."""
    service = start_service(*FAST, "--max-concurrent-calls", "8", "--max-calls-per-caller", "4")
    hold = threading.Event()

    def never_ending():
        yield pb.CheckRequest(image=reencoded(mosaic(63)))
        hold.wait(60)

    greedy = another_caller(service)
    streams = [greedy.CheckStream(never_ending(), timeout=60) for _ in range(6)]
    try:
        refused = []
        for stream in streams:
            try:
                next(stream)  # its first answer: admitted
            except grpc.RpcError as error:
                refused.append(error)
        assert [error.code() for error in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert "the most one caller may have (--max-calls-per-caller)" in refused[0].details()
        assert service.stub.Stats(pb.StatsRequest(), timeout=10).records == 0
        assert not service.stub.Check(pb.CheckRequest(image=mosaic(64)), timeout=60).is_duplicate
    finally:
        hold.set()
        for stream in streams:
            stream.cancel()


def test_bulk_work_is_taken_caller_by_caller():
    queues = scheduling.CallerQueues("cpu")
    for number in range(4):
        queues.add("greedy", f"greedy {number}")
    queues.add("modest", "modest 0")
    queues.add("greedy", "greedy 4")
    taken = [queues.take() for _ in range(len(queues))]
    assert taken == ["greedy 0", "modest 0", "greedy 1", "greedy 2", "greedy 3", "greedy 4"]


def test_bulk_work_waits_while_an_interactive_call_runs_and_interactive_work_does_not():
    """In the executor every stage's CPU work goes through: a bulk job submitted during an
    interactive call starts when the call ends; an interactive job starts at once."""
    executor = scheduling.LaneExecutor()
    started: dict[str, float] = {}
    try:
        with scheduling.in_lane(scheduling.INTERACTIVE, "searcher"):
            call_began = time.monotonic()
            scheduling.LANE.set(scheduling.BULK)  # a job of another call, submitted meanwhile
            bulk = executor.submit(lambda: started.setdefault("bulk", time.monotonic()))
            scheduling.LANE.set(scheduling.INTERACTIVE)
            executor.submit(lambda: started.setdefault("interactive", time.monotonic())).result(10)
            time.sleep(0.3)
            assert not bulk.done()
            call_ended = time.monotonic()
        bulk.result(10)
        assert started["interactive"] - call_began < 0.3 <= started["bulk"] - call_began
        assert started["bulk"] >= call_ended
        assert scheduling.INTERACTIVE_CALLS.count == 0
    finally:
        executor.shutdown()


def test_bulk_work_is_not_starved_by_interactive_calls_that_never_end():
    executor = scheduling.LaneExecutor()
    try:
        with scheduling.in_lane(scheduling.INTERACTIVE, "searcher"):
            scheduling.LANE.set(scheduling.BULK)
            began = time.monotonic()
            assert executor.submit(lambda: "done").result(10) == "done"
            waited = time.monotonic() - began
            scheduling.LANE.set(scheduling.INTERACTIVE)
        assert waited + 0.05 >= scheduling.BULK_PATIENCE_S
    finally:
        executor.shutdown()
