"""Detection as real catalogues need it, through the service with its default settings: pictures
enrolled twice, copies inside other pictures (and a picture that is not enrolled, inside the same
host), thumbnails, near-blank images."""

import io

import pytest
from PIL import Image, ImageOps

from service.core.decision import Policy
from service.media import insets
from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import RunningService, encode_jpeg, image_bytes, picture, reencoded

PICTURE = "portrait-portraits-monsters-falcon.jpg"
OTHERS = [
    "gnome-adwaita.jpg",
    "gnome-wood.jpg",
    "portrait-portraits-humans-mage-light.jpg",
    "portrait-portraits-drakes-blademaster.jpg",
    "stamp-animals-mammals-cats-lion.jpg",
    "stamp-animals-mammals-deer-deer.jpg",
]
HOST = "gnome-truchet.jpg"  # never enrolled
NOT_ENROLLED = "portrait-portraits-goblins-direwolver.jpg"


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def enrolled_service(data_dir, *flags: str) -> RunningService:
    """A running service with the falcon under two keys, the others and a grey blank enrolled."""
    service = RunningService(data_dir, *flags)
    service.wait_serving()
    items = [("falcon/original.jpg", image_bytes(PICTURE)), ("falcon/re-upload.jpg", reencoded(image_bytes(PICTURE)))]
    items += [(name, image_bytes(name)) for name in OTHERS]
    items.append(("blank/grey.png", png(Image.new("RGB", (300, 200), (128, 128, 128)))))
    results = list(service.stub.Enroll(iter(pb.EnrollRequest(key=k, image=d) for k, d in items), timeout=120))
    assert all(r.status == pb.EnrollResult.ENROLLED for r in results), results
    return service


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    service = enrolled_service(tmp_path_factory.mktemp("detection") / "data")
    try:
        yield service.stub
    finally:
        service.stop()


def check(stub, image: bytes, top_k: int = 3) -> pb.CheckResponse:
    return stub.Check(pb.CheckRequest(image=image, top_k=top_k), timeout=60)


def test_a_picture_enrolled_under_two_keys_is_found_by_its_cropped_copy_with_both_keys(stub):
    falcon = picture(PICTURE)
    cropped = falcon.crop((falcon.width // 8, falcon.height // 10, falcon.width * 7 // 8, falcon.height * 9 // 10))
    reply = check(stub, encode_jpeg(cropped))
    assert reply.is_duplicate and not reply.HasField("region")
    duplicates = {match.key for match in reply.matches if match.is_duplicate}
    assert duplicates == {"falcon/original.jpg", "falcon/re-upload.jpg"}
    assert all(match.nearest_similarity > 0.9 for match in reply.matches[:2])
    assert reply.matches[2].key in OTHERS and reply.matches[2].nearest_similarity < 0.9


def inside_host(name: str, side: int = 240, host_name: str = HOST, shown: Image.Image | None = None) -> bytes:
    host = ImageOps.fit(picture(host_name), (600, 600))
    shown = shown or picture(name)
    shown.thumbnail((side, side))
    host.paste(shown, (330, 40))
    return encode_jpeg(host)


def test_a_copy_shown_inside_a_larger_picture_is_found_in_its_region(stub):
    whole_image_only = check(stub, encode_jpeg(ImageOps.fit(picture(HOST), (600, 600))))
    assert not whole_image_only.is_duplicate
    reply = check(stub, inside_host(PICTURE))
    assert reply.is_duplicate and reply.matches[0].key.startswith("falcon/")
    assert reply.HasField("region") and reply.region.left >= 0.3 and reply.region.top <= 0.3
    assert reply.views > 1 and reply.region_score >= reply.score
    assert reply.residual < 0.1  # verified against the whole query: the copy aligns closely


def test_a_small_copy_the_whole_query_does_not_align_is_confirmed_by_its_region_alone(stub):
    """140 px of 600 on a striped host: aligned in the whole query it is not a close match, but the
    box it was found in, verified alone, is."""
    reply = check(stub, inside_host(PICTURE, 140, "mate-Stripes.jpg"))
    assert reply.is_duplicate and reply.matches[0].key.startswith("falcon/")
    assert reply.HasField("region") and reply.region.left >= 0.5 and reply.region.width < 0.3
    assert reply.residual < 0.08


def test_a_region_scoring_over_the_threshold_is_confirmed_as_closely_as_a_whole_query_would_be(stub):
    """A cropped copy at 160 px of 600: its region scores over the threshold, and the copy aligns
    less closely than `verified_residual` (its cut edge, its size) but within what a whole query
    scoring that much is allowed."""
    falcon = picture(PICTURE)
    cropped = falcon.crop((falcon.width * 15 // 100, falcon.height * 15 // 100, falcon.width, falcon.height))
    reply, policy = check(stub, inside_host(PICTURE, 160, shown=cropped)), Policy()
    assert reply.is_duplicate and reply.matches[0].key.startswith("falcon/") and reply.HasField("region")
    assert reply.region_score > policy.margin_threshold
    assert policy.verified_residual < reply.residual < policy.verified_residual_at_threshold


def test_a_picture_not_enrolled_inside_the_same_host_is_not_a_duplicate(stub):
    """Its regions are searched, and their nearest records verified: none aligns."""
    reply = check(stub, inside_host(NOT_ENROLLED))
    assert not reply.is_duplicate and reply.views > 1 and not reply.HasField("region")


def on_a_page(name: str, beside: str) -> Image.Image:
    """A picture drawn on white, shown on the white half of a page beside another one: no edge of
    it steps, so no box holds it (media/insets.py)."""
    page = Image.new("RGB", (600, 600), "white")
    page.paste(ImageOps.contain(picture(beside), (280, 560)), (10, 20))
    shown = picture(name)
    shown.thumbnail((230, 230))
    page.paste(shown, (320, 200))
    return page


def test_a_copy_no_box_holds_costs_one_view_without_a_feature_map(stub):
    """The packaged model outputs no feature map, so no window is searched (--region-windows needs a
    --model-file with one, tests/test_model_file.py): a copy no box holds is not found, at the cost
    of the whole query alone (docs/quality.md measures what the windows found)."""
    query = on_a_page("stamp-animals-mammals-deer-deer.jpg", "portrait-portraits-humans-swordsman-3.jpg")
    assert insets.boxes(query) == []
    reply = check(stub, encode_jpeg(query))
    assert not reply.is_duplicate and reply.views == 1


def test_a_20_px_thumbnail_is_answered(stub):
    small = picture(PICTURE)
    small.thumbnail((20, 20))
    reply = check(stub, png(small))
    assert max(small.size) == 20 and reply.matches and reply.matches[0].key.startswith("falcon/")


def test_a_16_px_thumbnail_scoring_under_the_reach_is_found_by_its_close_match(stub):
    """Its descriptor is far from its original's (a margin score under the verification's reach),
    but a query under --small-query-side is verified whatever its score, and it aligns closely."""
    name, policy = "portrait-portraits-drakes-blademaster.jpg", Policy()
    small = picture(name)
    small.thumbnail((16, 16))
    reply = check(stub, png(small))
    assert max(small.size) == 16 and reply.score < policy.margin_threshold - policy.verification_reach
    assert reply.is_duplicate and reply.matches[0].key == name and reply.residual < policy.verified_residual


def test_near_blank_images_are_flagged_and_not_duplicates_of_each_other(stub):
    other_grey = check(stub, encode_jpeg(Image.new("RGB", (320, 240), (131, 131, 131))))
    assert other_grey.low_information and not other_grey.is_duplicate
    assert other_grey.matches[0].key == "blank/grey.png" and not other_grey.matches[0].is_duplicate
    same_bytes = check(stub, png(Image.new("RGB", (300, 200), (128, 128, 128))))
    assert same_bytes.identical and same_bytes.is_duplicate
    assert not check(stub, image_bytes(HOST)).low_information
