"""Prometheus metrics: what an operator watches, in one registry served on --metrics-port.

Counters and histograms are updated where things happen (the RPC interceptor, the Triton
client, the servicer, the bundled Triton); the state of the index and the store is read when
Prometheus scrapes (StateCollector), so it is never stale. Label sets are bounded: method and
status code names, decisions, enrolment statuses, Triton error kinds.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RPCS = Counter(
    "neardup_rpc_requests",
    "RPCs answered, by service, method and status code",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "neardup_rpc_duration_seconds",
    "RPC duration, by service and method",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRITON_SECONDS = Histogram(
    "neardup_triton_request_duration_seconds",
    "one inference request to Triton",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRITON_REQUESTS = Counter(
    "neardup_triton_requests", "inference requests answered, by Triton (--triton-url)", ["url"], registry=REGISTRY
)
TRITON_BATCH = Histogram(
    "neardup_triton_batch_images", "images per inference request", buckets=(1, 2, 4, 8, 16), registry=REGISTRY
)
TRITON_ERRORS = Counter("neardup_triton_errors", "failed inference requests, by kind", ["kind"], registry=REGISTRY)
TRITON_QUEUED = Gauge("neardup_triton_queued_views", "views queued for or in Triton", registry=REGISTRY)
BULK_WAITING = Gauge(
    "neardup_bulk_work_waiting",
    "pieces of bulk work (Enroll, CheckStream, FindDuplicates) waiting for interactive calls to leave room, "
    "by kind: cpu (a thread's work) or model (a Triton request)",
    ["kind"],
    registry=REGISTRY,
)
VERIFICATION_KEPT_BYTES = Gauge(
    "neardup_verification_kept_bytes",
    "bytes of the enrolled pictures verification keeps prepared (least recently compared out first)",
    registry=REGISTRY,
)
READY = Gauge(
    "neardup_ready", "1 while readiness is SERVING: Triton and the model answer, the store can write", registry=REGISTRY
)
RUNTIME = Info("neardup_model_runtime", "what makes the features: runtime, provider, precision", registry=REGISTRY)
TRITON_RESTARTS = Counter("neardup_triton_restarts", "bundled tritonserver restarts after it died", registry=REGISTRY)
DECISIONS = Counter("neardup_decisions", "Check answers: duplicate, new or identical", ["decision"], registry=REGISTRY)
DECODES = Counter(
    "neardup_image_decodes",
    "caller images decoded (once per Check, Hash or Enroll item that gets that far)",
    registry=REGISTRY,
)
CHECK_STAGE_SECONDS = Histogram(
    "neardup_check_stage_seconds",
    "time a Check spent in a stage of its decision (core/stages/), by stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, *LATENCY_BUCKETS),
    registry=REGISTRY,
)
CHECK_DECIDED = Counter(
    "neardup_check_decided",
    "Check answers by the stage whose verdict they are (CheckResponse.decided_by) and the decision",
    ["stage", "decision"],
    registry=REGISTRY,
)
STREAM_READ_AHEAD = Gauge(
    "neardup_stream_read_ahead_requests",
    "Enroll and CheckStream requests read ahead of their answers (bounded per stream by --enroll-window)",
    registry=REGISTRY,
)
STREAM_READ_AHEAD_BYTES = Gauge(
    "neardup_stream_read_ahead_bytes",
    "bytes of those requests (bounded per stream by --enroll-window-bytes)",
    registry=REGISTRY,
)
ENROLLED = Counter("neardup_enroll_results", "Enroll items answered, by status", ["status"], registry=REGISTRY)
# Every series of a bounded label set exists from the start (at 0), so rates and alerts see it.
for kind in ("unavailable", "timeout", "rejected"):
    TRITON_ERRORS.labels(kind)
for decision in ("duplicate", "new", "identical"):
    DECISIONS.labels(decision)
for status in ("ENROLLED", "UPDATED", "UNCHANGED", "INVALID"):
    ENROLLED.labels(status)


def start_stages(names: list[str]) -> None:
    """Every stage's series from the start (at 0)."""
    for name in names:
        CHECK_STAGE_SECONDS.labels(name)
        for decision in ("duplicate", "new", "identical"):
            CHECK_DECIDED.labels(name, decision)


def observe_stage(name: str, seconds: float) -> None:
    CHECK_STAGE_SECONDS.labels(name).observe(seconds)


def count_decided(stage: str, decision: str) -> None:
    CHECK_DECIDED.labels(stage, decision).inc()


@dataclass(frozen=True)
class StageTotals:
    name: str
    runs: int
    seconds: float
    decided: dict[str, int]  # decision -> Checks


def stage_totals() -> list[StageTotals]:
    """What this process's stages did since it started, from the two families above."""
    runs, seconds, decided = {}, {}, {}
    for sample in next(iter(CHECK_STAGE_SECONDS.collect())).samples:
        if sample.name.endswith("_count"):
            runs[sample.labels["stage"]] = int(sample.value)
        elif sample.name.endswith("_sum"):
            seconds[sample.labels["stage"]] = sample.value
    for sample in next(iter(CHECK_DECIDED.collect())).samples:
        if sample.name.endswith("_total"):
            decided.setdefault(sample.labels["stage"], {})[sample.labels["decision"]] = int(sample.value)
    return [StageTotals(name, runs[name], seconds.get(name, 0.0), decided.get(name, {})) for name in runs]


class StateCollector(Collector):
    """Gauges read at scrape time: name -> (help, a function returning the value)."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]):
        self.gauges = gauges

    def collect(self):
        for name, (meaning, read) in self.gauges.items():
            yield GaugeMetricFamily(name, meaning, value=read())


def watch_state(index, store, small_views) -> None:
    """Registers the index, small views' and store gauges (once per process)."""

    def age() -> float:
        return time.time() - index.manifest.created_at if index.manifest else float("nan")

    REGISTRY.register(
        StateCollector(
            {
                "neardup_index_generation": ("index snapshot in use (0: none)", lambda: index.stats().generation),
                "neardup_index_snapshot_records": ("records in the snapshot", lambda: index.stats().snapshot_size),
                "neardup_index_live_added_records": (
                    "records enrolled since the snapshot (searched exhaustively)",
                    lambda: index.stats().unindexed,
                ),
                "neardup_index_live_removed_records": (
                    "snapshot records deleted or replaced since it",
                    lambda: index.stats().removed,
                ),
                "neardup_index_snapshot_age_seconds": ("seconds since the snapshot in use was built", age),
                "neardup_small_views": (
                    "enrolled pictures' small views in memory, searched for thumbnails",
                    lambda: len(small_views) if small_views is not None else 0,
                ),
                "neardup_store_records": ("records in the store", store.count),
                "neardup_store_bytes": ("bytes of the store's files", store.bytes_on_disk),
                "neardup_store_map_used_ratio": ("share of the LMDB map in use (it grows when full)", store.map_use),
                "neardup_store_writable": (
                    "1 while the store can write, 0 after a failed write",
                    lambda: float(store.write_failure is None),
                ),
            }
        )
    )


def serve_metrics(host: str, port: int) -> None:
    """The /metrics endpoint on host:port (a thread); port 0 serves nothing."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
