"""The milvus index backend against a real Milvus (Milvus Lite's server): several front services
sharing one collection, the same decisions as usearch, loading a collection from a store, and
Milvus going away and coming back. (tests/test_check_enroll.py runs its end-to-end tests on
both backends.)"""

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2

from service.core.decision import RULES, Candidate, Policy, decide
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.store import Store
from tests.conftest import MilvusLite, committed_image_names, health_status, image_bytes, mosaic, reencoded, wait_for

FAST = ("--enroll-views", "1", "--check-views", "1")


def on_milvus(uri: str, collection: str) -> tuple[str, ...]:
    return (*FAST, "--index-backend", "milvus", "--milvus-uri", uri, "--milvus-collection", collection)


def reference_points_of(data_dir, key: str) -> bytes:
    store = Store(data_dir, readonly=True)
    try:
        with store.read() as view:
            return view.reference_points(view.by_key(key).id)
    finally:
        store.close()


def enroll(service, key: str, image: bytes) -> pb.EnrollResult:
    [result] = service.stub.Enroll(iter([pb.EnrollRequest(key=key, image=image, metadata={"k": key})]), timeout=60)
    return result


def nearest_key(service, image: bytes) -> str:
    reply = service.stub.Check(pb.CheckRequest(image=image, top_k=5), timeout=60)
    return reply.matches[0].key if reply.matches else ""


def test_two_front_services_on_one_collection_see_each_others_enrolments(milvus_uri, start_service, tmp_path):
    first = start_service(*on_milvus(milvus_uri, "shared"), data_dir=tmp_path / "first")
    second = start_service(*on_milvus(milvus_uri, "shared"), data_dir=tmp_path / "second")
    one, two = mosaic(5001), mosaic(5002)
    assert enroll(first, "from/first", one).status == pb.EnrollResult.ENROLLED
    assert enroll(second, "from/second", two).status == pb.EnrollResult.ENROLLED
    for folder, key in ((tmp_path / "first", "from/first"), (tmp_path / "second", "from/second")):
        assert reference_points_of(folder, key), "verification's data stays in the enrolling service's store"

    # Visible through the other at once: by features, and byte-identical by digest.
    for service, image, key in [(second, one, "from/first"), (first, two, "from/second")]:
        reply = service.stub.Check(pb.CheckRequest(image=reencoded(image)), timeout=60)
        assert reply.matches[0].key == key and reply.is_duplicate and reply.matches[0].metadata == {"k": key}
        identical = service.stub.Check(pb.CheckRequest(image=image), timeout=60)
        assert identical.identical and identical.matches[0].key == key

    # A key is deleted through the service whose store holds it; then no front service finds it.
    with pytest.raises(grpc.RpcError) as raised:
        second.stub.Delete(pb.DeleteRequest(key="from/first"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    first.stub.Delete(pb.DeleteRequest(key="from/first"), timeout=10)
    assert nearest_key(second, reencoded(one)) != "from/first"
    assert nearest_key(first, reencoded(one)) != "from/first"
    stats = first.stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.index_size == 1 and stats.records == 0 and stats.unindexed_records == 0


def test_every_rule_decides_the_same_on_both_backends(milvus_uri, start_service, tmp_path):
    """The same enrolments on usearch and on Milvus give the same candidates (keys, distances,
    similarities to the nearest), so every rule's score and decision are the same."""
    usearch = start_service(*FAST, data_dir=tmp_path / "usearch")
    milvus = start_service(*on_milvus(milvus_uri, "same_rules"), data_dir=tmp_path / "milvus")
    names = committed_image_names()
    for service in (usearch, milvus):
        requests = [pb.EnrollRequest(key=name, image=image_bytes(name)) for name in names[:-3]]
        assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(iter(requests), timeout=120))
    queries = [reencoded(image_bytes(name), 30) for name in names]  # copies, and three never enrolled
    policies = [Policy(rule) for rule in RULES] + [Policy("margin", twin_similarity=0.8)]
    for query in queries:
        answers = [s.stub.Check(pb.CheckRequest(image=query, top_k=8), timeout=60) for s in (usearch, milvus)]
        keys = [[m.key for m in answer.matches] for answer in answers]
        assert keys[0] == keys[1]
        for ours, theirs in zip(answers[0].matches, answers[1].matches, strict=True):
            assert ours.distance == pytest.approx(theirs.distance, abs=1e-6)
            assert ours.nearest_similarity == pytest.approx(theirs.nearest_similarity, abs=1e-6)
        assert (answers[0].is_duplicate, answers[0].score) == (answers[1].is_duplicate, pytest.approx(answers[1].score))
        candidates = [
            [Candidate(m.distance, m.threshold, m.nearest_similarity) for m in answer.matches] for answer in answers
        ]
        for policy in policies:
            decided = [decide(policy, each) for each in candidates]
            assert decided[0].each == decided[1].each and decided[0].score == pytest.approx(decided[1].score)


def test_index_rebuild_loads_a_collection_from_the_store(milvus_uri, start_service, tmp_path):
    writer = start_service(*FAST, data_dir=tmp_path / "writer")  # enrolled on usearch
    images = {f"load/{n}": mosaic(5100 + n) for n in range(12)}
    results = writer.stub.Enroll(iter(pb.EnrollRequest(key=k, image=v) for k, v in images.items()), timeout=120)
    assert [r.status for r in results] == [pb.EnrollResult.ENROLLED] * len(images)
    writer.stop()
    loaded = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "rebuild", "--data-dir", str(tmp_path / "writer"),
         "--backend", "milvus", "--milvus-uri", milvus_uri, "--milvus-collection", "loaded", "--nice", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert "12 records loaded" in loaded.stdout and "12/12" in loaded.stderr  # the progress bar

    # A front service with an empty store of its own serves them from the collection.
    reader = start_service(*on_milvus(milvus_uri, "loaded"), data_dir=tmp_path / "reader")
    for key, image in images.items():
        assert nearest_key(reader, reencoded(image)) == key


def test_milvus_down_then_back(start_service, tmp_path):
    """Milvus unreachable: Check is UNAVAILABLE and readiness NOT_SERVING, an Enroll is kept in the
    store; once Milvus is back the background push makes it searchable."""
    milvus = MilvusLite(tmp_path / "milvus").start()
    try:
        service = start_service(*on_milvus(milvus.uri, "outage"), "--index-poll-s", "0.5", data_dir=tmp_path / "d")
        before, during = mosaic(5201), mosaic(5202)
        assert enroll(service, "before", before).status == pb.EnrollResult.ENROLLED
        milvus.stop()
        with pytest.raises(grpc.RpcError) as raised:
            service.stub.Check(pb.CheckRequest(image=reencoded(before)), timeout=60)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "Milvus" in raised.value.details()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_for(lambda: health_status(service.channel) == not_serving, 30, "readiness NOT_SERVING")
        assert enroll(service, "during", during).status == pb.EnrollResult.ENROLLED  # durable in the store

        milvus.start()  # the same data and port
        wait_for(lambda: nearest_key(service, reencoded(during)) == "during", 60, "the pushed enrolment")
        assert nearest_key(service, reencoded(before)) == "before"
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: health_status(service.channel) == serving, 30, "readiness SERVING again")
    finally:
        milvus.stop()


def test_a_collection_of_another_model_is_refused(milvus_uri, start_service, tmp_path):
    first = start_service(*on_milvus(milvus_uri, "model_check"), data_dir=tmp_path / "first")
    enroll(first, "any", mosaic(5301))
    other = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "other"), "--input-size", "288",
         *on_milvus(milvus_uri, "model_check")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode != 0 and "holds features of model 'sscd@224'" in other.stderr
