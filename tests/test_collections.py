"""Collections through the service, on both index backends: records kept apart, searched together
or apart, per-collection decision settings, and a key unique within its collection."""

import grpc
import pytest

from service.core.decision import Policy
from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import RunningService, mosaic, reencoded

FAST = ("--enroll-views", "1", "--check-views", "1")


@pytest.fixture(scope="module", params=["usearch", "milvus"])
def service(request, tmp_path_factory):
    flags = list(FAST)
    if request.param == "milvus":
        uri = request.getfixturevalue("milvus_uri")
        flags += ["--index-backend", "milvus", "--milvus-uri", uri, "--milvus-collection", "collections"]
    running = RunningService(tmp_path_factory.mktemp("collections") / "data", *flags).wait_serving()
    yield running
    running.stop()


def enroll(service, *items: tuple[str, str, bytes]) -> list[pb.EnrollResult]:
    requests = [pb.EnrollRequest(collection=collection, key=key, image=image) for collection, key, image in items]
    return list(service.stub.Enroll(iter(requests), timeout=120))


def check(service, image: bytes, *collections: str) -> pb.CheckResponse:
    return service.stub.Check(pb.CheckRequest(image=image, top_k=5, collections=collections), timeout=60)


def test_collections_keep_records_apart(service):
    picture = mosaic(7001)
    assert enroll(service, ("shop-a", "sku/1", picture))[0].status == pb.EnrollResult.ENROLLED
    copy = reencoded(picture)
    assert all(m.key != "sku/1" for m in check(service, copy, "shop-b").matches)
    assert not check(service, copy, "shop-b").is_duplicate
    for collections in (("shop-a",), ("shop-a", "shop-b"), ()):  # that one, both, or every collection
        reply = check(service, copy, *collections)
        assert reply.is_duplicate and (reply.matches[0].key, reply.matches[0].collection) == ("sku/1", "shop-a")
    # Byte-identical lookups obey the collections too.
    assert not check(service, picture, "shop-b").identical
    assert check(service, picture, "shop-a").identical


def test_a_key_is_unique_within_its_collection(service):
    one, two = mosaic(7002), mosaic(7003)
    results = enroll(service, ("left", "same-key", one), ("right", "same-key", two))
    assert [r.status for r in results] == [pb.EnrollResult.ENROLLED] * 2
    service.stub.Delete(pb.DeleteRequest(collection="left", key="same-key"), timeout=10)
    assert all(m.collection != "left" for m in check(service, reencoded(one)).matches if m.key == "same-key")
    right = check(service, reencoded(two))
    assert (right.matches[0].key, right.matches[0].collection, right.is_duplicate) == ("same-key", "right", True)
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.Delete(pb.DeleteRequest(collection="left", key="same-key"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "in collection 'left'" in raised.value.details()


def test_a_collections_own_threshold_changes_decisions_only_there(service):
    strict, lenient = mosaic(7004), mosaic(7005)
    enroll(service, ("strict", "s", strict), ("lenient", "l", lenient))
    assert check(service, reencoded(strict)).is_duplicate and check(service, reencoded(lenient)).is_duplicate
    answer = service.stub.SetCollection(pb.SetCollectionRequest(collection="strict", rule="margin", threshold=1.5))
    assert (answer.rule, answer.own_settings, answer.records) == ("margin", True, 1)
    assert answer.threshold == pytest.approx(1.5)
    strict_reply = check(service, reencoded(strict))
    assert (
        strict_reply.matches[0].key == "s"
        and not strict_reply.is_duplicate
        and not strict_reply.matches[0].is_duplicate
    )
    assert check(service, reencoded(lenient)).is_duplicate  # the other collection keeps the service's
    stats = {c.name: c for c in service.stub.Stats(pb.StatsRequest(), timeout=10).collections}
    assert stats["strict"].own_settings and stats["strict"].threshold == pytest.approx(1.5)
    assert not stats["lenient"].own_settings and stats["lenient"].threshold == pytest.approx(Policy().margin_threshold)
    assert stats["lenient"].records == 1 and "" in stats
    service.stub.SetCollection(pb.SetCollectionRequest(collection="strict", reset=True))
    assert check(service, reencoded(strict)).is_duplicate


def test_bad_collection_names_and_settings_are_refused(service):
    [result] = enroll(service, ("no spaces allowed", "k", mosaic(7006)))
    assert result.status == pb.EnrollResult.INVALID and "collection" in result.error
    for call in (
        lambda: check(service, mosaic(7006), "a/b"),
        lambda: service.stub.Delete(pb.DeleteRequest(collection="x" * 65, key="k"), timeout=10),
        lambda: service.stub.SetCollection(pb.SetCollectionRequest(collection="c", rule="seed", threshold=0.1)),
        lambda: service.stub.SetCollection(pb.SetCollectionRequest(collection="c", rule="nonsense")),
        *(  # outside what the rule's scores can be: nothing, or everything, would be a duplicate
            lambda threshold=threshold: service.stub.SetCollection(
                pb.SetCollectionRequest(collection="c", rule="margin", threshold=threshold)
            )
            for threshold in (float("nan"), float("inf"), -3.4e38, 1.6)
        ),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "c" not in {stats.name for stats in service.stub.Stats(pb.StatsRequest(), timeout=10).collections}


def test_collection_settings_survive_a_restart(start_service, tmp_path):
    first = start_service(*FAST, data_dir=tmp_path / "d")
    first.stub.SetCollection(pb.SetCollectionRequest(collection="kept", rule="global", threshold=0.9))
    enroll(first, ("kept", "k", mosaic(7007)))
    first.stop()
    again = start_service(*FAST, data_dir=tmp_path / "d")
    [kept] = [c for c in again.stub.Stats(pb.StatsRequest(), timeout=10).collections if c.name == "kept"]
    assert (kept.rule, kept.records, kept.own_settings) == ("global", 1, True)
    assert check(again, reencoded(mosaic(7007)), "kept").decision_rule == "global"  # the collection's rule decided
