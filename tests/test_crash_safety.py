"""kill -9 in the middle of a long Enroll stream: every acknowledged key survives, intact."""

import hashlib

import grpc
import numpy as np

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.store import Store
from tests.conftest import mosaic

FAST = ("--enroll-views", "1", "--check-views", "1")
COUNT, KILL_AFTER = 300, 100


def test_kill_9_mid_stream_loses_no_acknowledged_key_and_resending_is_idempotent(tmp_path, start_service):
    data_dir = tmp_path / "data"
    images = {f"crash/{i}": mosaic(1000 + i) for i in range(COUNT)}
    requests = [pb.EnrollRequest(key=key, image=image, metadata={"n": key}) for key, image in images.items()]

    service = start_service(*FAST, data_dir=data_dir)
    acknowledged = []
    try:
        for result in service.stub.Enroll(iter(requests), timeout=120):
            assert result.status == pb.EnrollResult.ENROLLED
            acknowledged.append(result.key)
            if len(acknowledged) == KILL_AFTER:
                service.process.kill()
                service.process.wait(10)
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    assert len(acknowledged) >= KILL_AFTER and len(acknowledged) < COUNT, "the kill came too late to test anything"

    restarted = start_service(*FAST, data_dir=data_dir)
    for key in acknowledged:
        reply = restarted.stub.Check(pb.CheckRequest(image=images[key]), timeout=30)
        assert reply.identical and reply.matches[0].key == key and reply.matches[0].metadata == {"n": key}
    restarted.stop()

    store = Store(data_dir, readonly=True)
    with store.read() as view:
        records = list(view.records())
        assert set(acknowledged) <= {record.key for record in records}
        for record in records:  # no torn record: every one decodes whole and matches its image
            assert record.sha256 == hashlib.sha256(images[record.key]).digest()
            assert np.isfinite(record.feature).all()
            assert abs(np.linalg.norm(record.feature.astype(np.float32)) - 1) < 1e-2
            assert view.by_key(record.key).id == record.id
            assert [r.id for r in view.by_digest(record.sha256)] == [record.id]
        committed = len(records)
    store.close()

    again = start_service(*FAST, data_dir=data_dir)
    results = list(again.stub.Enroll(iter(requests), timeout=300))
    statuses = {result.key: result.status for result in results}
    assert all(statuses[key] == pb.EnrollResult.UNCHANGED for key in acknowledged)
    assert [s for s in statuses.values()].count(pb.EnrollResult.UNCHANGED) == committed
    assert set(statuses.values()) <= {pb.EnrollResult.UNCHANGED, pb.EnrollResult.ENROLLED}
    assert again.stub.Stats(pb.StatsRequest(), timeout=10).records == COUNT
