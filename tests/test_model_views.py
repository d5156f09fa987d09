"""The view recipe inside the Triton model (model_repository/sscd/1/model.py), run in-process."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

MODEL_FILE = Path(__file__).parent.parent / "model_repository" / "sscd" / "1" / "model.py"


@pytest.fixture(scope="module")
def model():
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("sscd_model", MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def canvas():
    return np.random.default_rng(0).integers(0, 256, (246, 246, 3), dtype=np.uint8)


@pytest.mark.parametrize("views", [1, 2, 10, 20, 50])
def test_each_supported_count_gives_that_many_views_at_the_input_side(model, canvas, views):
    made = model.make_views(canvas, views)
    assert made.shape == (views, 224, 224, 3) and made.dtype == np.uint8


def test_two_views_are_the_image_and_its_mirror(model, canvas):
    whole, mirrored = model.make_views(canvas, 2)
    assert np.array_equal(mirrored, whole[:, ::-1])


def test_the_seed_recipe_is_five_rotations_of_five_crops_with_and_without_flip(model, canvas):
    made = model.make_views(canvas, 50)
    # Each crop is followed by its mirror.
    assert all(np.array_equal(made[i + 1], made[i][:, ::-1]) for i in range(0, 50, 2))
    # The unrotated set (the third of five rotations, 0 degrees) holds the plain corner and centre crops.
    unrotated = made[20:30]
    assert np.array_equal(unrotated[0], canvas[:224, :224])
    assert np.array_equal(unrotated[6], canvas[22:, 22:])
    assert np.array_equal(unrotated[8], canvas[11:235, 11:235])
    # The rotated sets differ from the plain one.
    assert not np.array_equal(made[0], unrotated[0])


@pytest.mark.parametrize("views", [0, 3, 15])
def test_other_counts_are_refused(model, views):
    assert not model.view_count_is_valid(views)


def test_mean_is_unit_length_and_the_radius_is_the_farthest_view(model):
    views = np.random.default_rng(1).normal(size=(10, 512)).astype(np.float32)
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    mean, radius = model.mean_and_radius(views)
    assert np.linalg.norm(mean) == pytest.approx(1.0, abs=1e-5)
    assert radius == pytest.approx(np.linalg.norm(views - mean, axis=1).max(), rel=1e-5)


def test_each_window_is_pooled_and_projected_as_the_network_pools_its_whole_map(model, tmp_path):
    """The pooling read from the graph of a model that outputs its feature map (one made at test
    time; the packaged models output none) gives the network's own embedding on the whole map, and
    each window's embedding is that pooling on the window's cells."""
    import onnx
    import onnxruntime as ort

    from tests.model_files import tiny_model

    path = tiny_model(tmp_path / "tiny.onnx")
    windows = model.Windows.of(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    view = np.random.default_rng(2).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    embedding, maps = session.run([session.get_outputs()[0].name, windows.map_name], {"image": view})
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)

    def pooled(cells: np.ndarray) -> np.ndarray:
        gem = (np.maximum(cells, windows.least) ** windows.power).mean((1, 2)) ** (1 / windows.power)
        projected = windows.weight @ gem + windows.bias
        return projected / np.linalg.norm(projected)

    assert maps.shape[2:] == (model.WINDOW_CELLS, model.WINDOW_CELLS)
    assert float(pooled(maps[0]) @ embedding[0]) > 0.9999
    embedded = windows.embed(maps)
    assert embedded.shape == (1, len(model.window_cells()), 512)
    for i, (left, top, side) in enumerate(model.window_cells()):
        assert float(embedded[0, i] @ pooled(maps[0, :, top : top + side, left : left + side])) > 0.9999, i
