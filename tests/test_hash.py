"""Hash over real gRPC, through the real bundled Triton."""

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import image_bytes


def hash_image(stub, data: bytes, views: int = 0) -> pb.HashResponse:
    return stub.Hash(pb.HashRequest(image=data, views=views), timeout=60)


def feature(response: pb.HashResponse) -> np.ndarray:
    return np.array(response.feature, dtype=np.float32)


def reencoded(data: bytes, scale: float, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_hash_returns_a_unit_512_float_feature_and_a_positive_threshold(stub):
    response = hash_image(stub, image_bytes("gnome-adwaita.jpg"), views=10)
    values = feature(response)
    assert values.shape == (512,)
    assert np.all(np.isfinite(values))
    assert np.linalg.norm(values) == pytest.approx(1.0, abs=1e-4)
    assert response.threshold > 0
    assert response.model == "sscd"
    assert response.views == 10
    assert response.input_size == 224


def test_hash_defaults_to_the_views_of_an_enrolment(stub):
    response = hash_image(stub, image_bytes("gnome-adwaita.jpg"))
    assert response.views == 1 and response.threshold == pytest.approx(0.0, abs=1e-5)


def test_identical_bytes_give_identical_output(stub):
    data = image_bytes("stamp-animals-mammals-cats-lion.jpg")
    first, second = hash_image(stub, data), hash_image(stub, data)
    assert list(first.feature) == list(second.feature)
    assert first.threshold == second.threshold


def test_reencoded_resized_copy_is_close_and_other_images_are_far(stub):
    names = [
        "gnome-wood.jpg",
        "portrait-portraits-humans-mage-light.jpg",
        "stamp-animals-mammals-deer-deer.jpg",
    ]
    originals = {name: feature(hash_image(stub, image_bytes(name))) for name in names}
    for name in names:
        copy = feature(hash_image(stub, reencoded(image_bytes(name), scale=0.7, quality=70)))
        copy_distance = np.linalg.norm(copy - originals[name])
        others = [np.linalg.norm(copy - originals[other]) for other in names if other != name]
        assert copy_distance < 0.5, f"{name}: re-encoded copy at distance {copy_distance:.3f}"
        assert min(others) > 1.0, f"{name}: an unrelated image at distance {min(others):.3f}"
        assert min(others) > 2 * copy_distance


def test_views_are_selectable_and_the_seed_recipe_runs(stub):
    data = image_bytes("gnome-symbolic.jpg")
    single = hash_image(stub, data, views=1)
    seed = hash_image(stub, data, views=50)
    assert single.views == 1 and single.threshold == pytest.approx(0.0, abs=1e-5)
    assert seed.views == 50 and seed.threshold > 0
    # The seed's rule: the plain image lies within the radius of its own 50 views.
    assert np.linalg.norm(feature(single) - feature(seed)) <= seed.threshold


def test_an_unsupported_view_count_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as raised:
        hash_image(stub, image_bytes("gnome-symbolic.jpg"), views=7)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of 10" in raised.value.details()
