"""The decision's pipeline of stages (core/pipeline.py, core/stages/) through the service: each
stage decides the queries only it catches (CheckResponse.decided_by), skipping it changes only
those, a Check decodes the caller's bytes once whatever stages run, and /metrics and Stats count
each stage."""

from collections import Counter

import pytest
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import RunningService, encode_jpeg, faded, image_bytes, picture, scrape
from tests.test_detection import HOST, PICTURE, enrolled_service, inside_host, png

LION = "stamp-animals-mammals-cats-lion.jpg"


def queries() -> dict[str, tuple[bytes, str]]:
    """Query name -> (its bytes, the stage that decides it with every stage on)."""
    falcon = picture(PICTURE)
    cropped = falcon.crop((falcon.width // 8, falcon.height // 10, falcon.width * 7 // 8, falcon.height * 9 // 10))
    thumbnail = picture("portrait-portraits-drakes-blademaster.jpg")
    thumbnail.thumbnail((16, 16))  # far from its original's descriptor: verified whatever its score
    return {
        "the same bytes": (image_bytes(PICTURE), "identical"),
        "a cropped copy": (encode_jpeg(cropped), "search"),
        "a picture not enrolled": (image_bytes(HOST), "search"),
        "a 16 px thumbnail": (png(thumbnail), "verification"),
        "a copy dismissed": (faded(image_bytes(LION)), "memory"),
        "another blank": (encode_jpeg(Image.new("RGB", (320, 240), (131, 131, 131))), "low_information"),
        "a copy inside another picture": (inside_host(PICTURE), "regions"),
        "another copy inside another picture": (inside_host("portrait-portraits-humans-mage-light.jpg"), "regions"),
    }


def answer(reply: pb.CheckResponse) -> tuple:
    return reply.is_duplicate, reply.identical, reply.decided_by, [match.key for match in reply.matches]


def decodes(service: RunningService) -> float:
    return scrape(service.metrics_port)["neardup_image_decodes_total", ()]


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """Every query's reply with every stage on, and how many times each decoded its bytes; then the
    service's /metrics and Stats, and the data directory (the service stopped)."""
    data_dir = tmp_path_factory.mktemp("pipeline") / "data"
    service = enrolled_service(data_dir)
    try:
        dismissed = queries()["a copy dismissed"][0]
        service.stub.Dismiss(pb.DismissRequest(key=LION, image=dismissed), timeout=60)
        replies, decoded = {}, {}
        for name, (image, _) in queries().items():
            before = decodes(service)
            replies[name] = service.stub.Check(pb.CheckRequest(image=image, top_k=3), timeout=60)
            decoded[name] = decodes(service) - before
        metrics = scrape(service.metrics_port)
        stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
    finally:
        service.stop()
    return replies, decoded, metrics, stats, data_dir


def test_each_stage_decides_the_queries_it_catches(answered):
    replies, *_ = answered
    assert {name: replies[name].decided_by for name in replies} == {
        name: stage for name, (_, stage) in queries().items()
    }
    assert replies["the same bytes"].identical and not replies["a copy dismissed"].is_duplicate
    assert replies["a copy dismissed"].matches[0].dismissed and replies["another blank"].low_information
    assert (
        replies["a copy inside another picture"].HasField("region")
        and not replies["a picture not enrolled"].is_duplicate
    )


@pytest.mark.parametrize("skipped", [("verification", "memory", "low_information"), ("identical", "regions")])
def test_skipping_stages_changes_only_the_queries_they_decided(answered, skipped):
    replies, _, _, _, data_dir = answered
    service = RunningService(data_dir, "--skip-stages", ",".join(skipped)).wait_serving()
    try:
        for name, (image, stage) in queries().items():
            reply = service.stub.Check(pb.CheckRequest(image=image, top_k=3), timeout=60)
            assert reply.decided_by not in skipped, name
            if stage in skipped:
                assert answer(reply) != answer(replies[name]), name
            else:
                assert answer(reply) == answer(replies[name]), name
    finally:
        service.stop()


def test_a_check_decodes_the_callers_bytes_at_most_twice_whichever_stages_run(answered):
    """A JPEG once for the canvas and once for all the stages that need more pixels (verification,
    the regions), whichever of them run; a PNG once for everything; identical bytes not at all."""
    replies, decoded, *_ = answered
    expected = {}
    for name, (image, stage) in queries().items():
        jpeg = image[:3] == b"\xff\xd8\xff"
        expected[name] = 0 if stage == "identical" else 2 if jpeg and stage == "regions" else 1 if not jpeg else None
    assert expected["a 16 px thumbnail"] == 1  # verified: its one decode served the canvas and verification
    assert sum(count == 2 for count in expected.values()) >= 2  # regions and verification ran on one decode
    assert all(decoded[name] == count for name, count in expected.items() if count is not None), decoded
    assert all(0 < decoded[name] <= 2 for name, count in expected.items() if count is None), decoded


def test_metrics_and_stats_count_each_stage(answered):
    replies, _, metrics, stats, _ = answered
    decided = Counter(
        (reply.decided_by, "identical" if reply.identical else "duplicate" if reply.is_duplicate else "new")
        for reply in replies.values()
    )
    labelled = [(name, dict(labels), value) for (name, labels), value in metrics.items()]
    counted = {
        (labels["stage"], labels["decision"]): value
        for name, labels, value in labelled
        if name == "neardup_check_decided_total" and value
    }
    assert counted == decided
    runs = {labels["stage"]: value for name, labels, value in labelled if name == "neardup_check_stage_seconds_count"}
    embedded = sum(not reply.identical for reply in replies.values())
    searched_regions = sum(reply.HasField("region_score") for reply in replies.values())
    # The regions stage also runs for a query that matched nothing and shows no box (nothing searched).
    no_box = sum(
        not (reply.is_duplicate or reply.low_information or reply.HasField("region_score"))
        for reply in replies.values()
    )
    assert runs["identical"] == len(replies) and runs["embedding"] == runs["search"] == embedded
    assert runs["regions"] == searched_regions + no_box and searched_regions >= 3 and runs["geometric"] == 0
    by_name = {stage.name: stage for stage in stats.stages}
    assert list(by_name) == list(runs)  # the order a Check runs them
    for (stage, decision), count in decided.items():
        field = {"duplicate": "duplicates", "new": "not_duplicates", "identical": "identical"}[decision]
        assert getattr(by_name[stage], field) == count
    assert all(by_name[stage].runs == count for stage, count in runs.items())
    assert by_name["embedding"].seconds > 0 and by_name["geometric"].seconds == 0
