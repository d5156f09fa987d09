"""model_repository/ and service/triton/contract.py agree: tensor names, dims, batch, canvas, views."""

import importlib.util
import re
import struct
import sys
import types
from pathlib import Path

import pytest

from service.config import Settings
from service.triton import contract

REPOSITORY = Path(__file__).parent.parent / "model_repository"


def tensors(config: str, section: str) -> dict[str, tuple[str, list[int]]]:
    """{name: (data_type, dims)} of a config.pbtxt's input or output list."""
    block = re.search(rf"^{section} \[(.*?)^\]", config, re.M | re.S).group(1)
    found = {}
    for name, data_type, dims in re.findall(r'name: "(\w+)", data_type: (\w+), dims: \[([^\]]*)\]', block):
        found[name] = (data_type, [int(d) for d in dims.split(",")])
    return found


def load_model_code(model: str):
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location(f"{model}_model", REPOSITORY / model / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", [*contract.MODELS, contract.FILE_MODEL])
def test_the_config_declares_the_contracts_tensors_and_batch(model):
    config = (REPOSITORY / model / "config.pbtxt").read_text()
    assert int(re.search(r"^max_batch_size: (\d+)$", config, re.M).group(1)) == contract.MAX_BATCH
    assert tensors(config, "input") == {
        contract.IMAGE: ("TYPE_UINT8", [-1, -1, 3]),
        contract.VIEWS: ("TYPE_INT32", [1]),
    }
    width = -1 if model == contract.FILE_MODEL else contract.DIMENSIONS  # a file's own width
    assert tensors(config, "output") == {
        contract.FEATURE: ("TYPE_FP32", [width]),
        contract.THRESHOLD: ("TYPE_FP32", [1]),
        contract.RUNTIME: ("TYPE_STRING", [1]),
        contract.WINDOWS: ("TYPE_FP32", [contract.WINDOW_COUNT, width]),
    }


@pytest.mark.parametrize("model", contract.MODELS)
def test_the_model_code_makes_the_views_and_canvases_the_contract_names(model):
    code = load_model_code(model)
    assert code.CANVAS_SCALE == contract.CANVAS_SCALE
    for views in range(0, 201):
        assert (contract.view_problem(views) is None) == code.view_count_is_valid(views), views
    source = (REPOSITORY / model / "1" / "model.py").read_text()
    for name in (
        contract.IMAGE,
        contract.VIEWS,
        contract.FEATURE,
        contract.THRESHOLD,
        contract.RUNTIME,
        contract.WINDOWS,
    ):
        assert f'"{name}"' in source, name
    assert f"< {contract.MIN_CANVAS}" in source


@pytest.mark.parametrize("model", contract.MODELS)
def test_the_model_code_pools_the_windows_the_contract_names(model):
    code = load_model_code(model)
    assert contract.canvas_size(contract.WINDOW_INPUT) == code.WINDOW_CANVAS
    assert code.WINDOW_CELLS == contract.WINDOW_CELLS == contract.WINDOW_INPUT // 32  # the last map: 32 px a cell
    cells = contract.WINDOW_CELLS
    assert [(left / cells, top / cells, side / cells, side / cells) for left, top, side in code.window_cells()] == (
        contract.window_boxes()
    )


@pytest.mark.parametrize("model", contract.MODELS)
def test_the_warm_up_sends_a_default_canvas_and_a_valid_view_count(model):
    config = (REPOSITORY / model / "config.pbtxt").read_text()
    side = contract.canvas_size(Settings().triton.input_size)
    assert f'key: "IMAGE" value: {{ data_type: TYPE_UINT8, dims: [ {side}, {side}, 3 ]' in config
    [views_file] = re.findall(
        r'key: "VIEWS" value: \{ data_type: TYPE_INT32, dims: \[ 1 \], input_data_file: "(\w+)"', config
    )
    [views] = struct.unpack("<i", (REPOSITORY / model / "warmup" / views_file).read_bytes())
    assert contract.view_problem(views) is None
