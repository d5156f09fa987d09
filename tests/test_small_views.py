"""Small views (storage/small_views.py): each enrolled picture's feature as a thumbnail of it, kept
in memory from the store's change log (a real LMDB store), and searched through the service for a
thumbnail its nearest records do not confirm."""

from dataclasses import replace

import numpy as np
import pytest

from service.core.decision import Policy
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage import change_log
from service.storage.small_views import SmallViews
from service.storage.store import Store
from tests.conftest import IMAGES, RunningService, image_bytes, picture
from tests.test_detection import png
from tests.test_store import MODEL, item, unit


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path)
    yield opened
    opened.close()


def enroll(store: Store, key: str, small_seed: int | None, collection: str = "") -> int:
    """Enrols `key` with the small view unit(small_seed) (None: without one); returns its id."""
    small = unit(small_seed) if small_seed is not None else None
    [written] = store.enroll(MODEL, [replace(item(key, key), small_view=small, collection=collection)])
    return written.record.id


def nearest_ids(views: SmallViews, feature, k: int, collections: frozenset[str] | None = None) -> list[int]:
    return [id_ for id_, _ in views.nearest(feature, k, collections)]


def test_small_views_are_found_by_their_own_feature_and_follow_enrolments_and_deletions(store):
    ids = {key: enroll(store, key, seed) for seed, key in enumerate(["a", "b", "c", "d"])}
    enroll(store, "plain", None)  # enrolled while small views were off: not searched
    views = SmallViews(store)
    views.catch_up()
    assert len(views) == 4
    assert [nearest_ids(views, unit(seed), 1) for seed in range(4)] == [[ids[key]] for key in "abcd"]
    seed_of = {ids[key]: seed for seed, key in enumerate("abcd")}
    found = views.nearest(unit(1), 4)  # nearest first, each with its distance (float16 features)
    assert [distance for _, distance in found] == sorted(distance for _, distance in found)
    for id_, distance in found:
        assert distance == pytest.approx(float(np.linalg.norm(unit(1) - unit(seed_of[id_]))), abs=1e-2)
    store.delete("a")  # its row is taken by the last one's
    ids["e"] = enroll(store, "e", 10)
    views.catch_up()
    assert len(views) == 4 and ids["a"] not in nearest_ids(views, unit(0), 4)
    assert [nearest_ids(views, unit(seed), 1) for seed in (1, 2, 3, 10)] == [[ids[key]] for key in "bcde"]


def test_a_search_limited_to_collections_finds_only_theirs(store):
    cats = [enroll(store, f"cat{n}", n, collection="cats") for n in range(3)]
    dogs = [enroll(store, f"dog{n}", 10 + n, collection="dogs") for n in range(3)]
    default = enroll(store, "default", 20)
    views = SmallViews(store)
    views.catch_up()
    assert nearest_ids(views, unit(10), 2, frozenset({"cats"}))[0] in cats
    assert set(nearest_ids(views, unit(10), 10, frozenset({"cats"}))) == set(cats)
    assert nearest_ids(views, unit(10), 1, frozenset({"dogs", "cats"})) == [dogs[0]]
    assert nearest_ids(views, unit(10), 5, frozenset({""})) == [default]


def test_views_behind_a_pruned_change_log_read_every_small_view_again(store):
    enroll(store, "a", 0)
    views = SmallViews(store)
    views.catch_up()
    store.delete("a")
    b = enroll(store, "b", 1)
    with store.read() as view:
        change_log.prune(store, view.seq())  # as a rebuild in another worker would
    views.catch_up()
    assert len(views) == 1 and nearest_ids(views, unit(0), 5) == [b]


# Through the service ----------------------------------------------------------------------------

# Never enrolled: their thumbnails are negatives.
UNENROLLED = [
    "gnome-truchet.jpg",
    "portrait-portraits-goblins-direwolver.jpg",
    "stamp-animals-mammals-camel-dromedary.jpg",
]
# A second file of gnome-adwaita.jpg's picture, whose small thumbnails the nearest records do not
# confirm once the other neighbours are not compared (--thumbnail-enlargement 0).
THUMBNAILED = "gnome-adwaita__1.jpg"
NO_NEIGHBOURS = ("--thumbnail-enlargement", "0")


def enrolled_catalogue(*flags: str, data_dir) -> RunningService:
    service = RunningService(data_dir, *flags).wait_serving()
    names = sorted(path.name for path in IMAGES.glob("*.jpg") if path.name not in UNENROLLED)
    requests = (pb.EnrollRequest(key=name, image=image_bytes(name)) for name in names)
    assert all(result.status == pb.EnrollResult.ENROLLED for result in service.stub.Enroll(requests, timeout=120))
    return service


def thumbnail(name: str, side: int) -> bytes:
    small = picture(name)
    small.thumbnail((side, side))
    return png(small)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    service = enrolled_catalogue(*NO_NEIGHBOURS, data_dir=tmp_path_factory.mktemp("small-views") / "data")
    try:
        yield service.stub
    finally:
        service.stop()


def check(stub, image: bytes) -> pb.CheckResponse:
    return stub.Check(pb.CheckRequest(image=image, top_k=3), timeout=60)


@pytest.mark.parametrize("side", [16, 20, 28])
def test_a_thumbnail_its_nearest_records_do_not_confirm_is_found_through_its_small_view(stub, side):
    reply = check(stub, thumbnail(THUMBNAILED, side))
    assert reply.is_duplicate and reply.small_view and reply.decided_by == "small_views"
    assert reply.matches[0].key == THUMBNAILED and reply.matches[0].is_duplicate
    assert reply.residual <= Policy().small_view_residual and reply.views == 1  # no view more than the query's


@pytest.mark.parametrize("name", UNENROLLED)
def test_thumbnails_of_pictures_not_enrolled_are_not_duplicates(stub, name):
    for side in (16, 24, 32, 48):
        reply = check(stub, thumbnail(name, side))
        assert not reply.is_duplicate and not reply.small_view, (name, side)


def test_a_deleted_picture_is_no_longer_found_through_its_small_view(stub):
    small = thumbnail(THUMBNAILED, 20)
    same_picture = ["gnome-adwaita.jpg", THUMBNAILED]
    for key in same_picture:
        stub.Delete(pb.DeleteRequest(key=key), timeout=10)
    try:
        reply = check(stub, small)
        assert not reply.is_duplicate and THUMBNAILED not in [match.key for match in reply.matches]
    finally:
        requests = (pb.EnrollRequest(key=key, image=image_bytes(key)) for key in same_picture)
        assert all(r.status == pb.EnrollResult.ENROLLED for r in stub.Enroll(requests, timeout=60))
    assert check(stub, small).small_view


def test_without_small_views_the_same_thumbnail_is_not_found(tmp_path):
    service = enrolled_catalogue(*NO_NEIGHBOURS, "--small-view-side", "0", data_dir=tmp_path / "data")
    try:
        reply = check(service.stub, thumbnail(THUMBNAILED, 20))
        assert not reply.is_duplicate and not reply.small_view
    finally:
        service.stop()
    store = Store(tmp_path / "data", readonly=True)
    try:
        with store.read() as view:
            assert view.count() > 0 and list(view.small_views()) == []
    finally:
        store.close()
