"""Tiny ONNX models made at test time (onnx.helper) that meet the --model-file contract, or break it.

The network: a 1 x 1 convolution of the RGB pixels, ReLU, 32 x 32 average pooling (the feature map,
32 px a cell as in SSCD), then SSCD's head: GeM pooling and one Gemm projection to 512 dimensions.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.triton import contract
from service.triton.model_file import INPUT_SIZE_KEY

CHANNELS = 16


def tiny_model(
    path: Path,
    seed: int = 0,
    feature_map: bool = True,
    dimensions: int = contract.DIMENSIONS,
    input_type: int = TensorProto.UINT8,
    input_side: int | None = None,
    input_size: str | None = None,
) -> Path:
    """Writes the model to `path`: its map as the second output where `feature_map`; a fixed
    `input_side` and a metadata `input_size` where given."""
    rng = np.random.default_rng(seed)
    weights = {
        "mix": rng.normal(size=(CHANNELS, 3, 1, 1)).astype(np.float32) / 64,
        "least": np.array(1e-6, np.float32),
        "power": np.array(3.0, np.float32),
        "root": np.array(1 / 3, np.float32),
        "projection": rng.normal(size=(dimensions, CHANNELS)).astype(np.float32),
    }
    # Embeddings measured from a grey picture's: pictures of other colours point other ways.
    grey = np.maximum(weights["mix"][:, :, 0, 0] @ np.full(3, 128.0, np.float32), 1e-6)
    weights["bias"] = -(weights["projection"] @ grey).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["planes"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["planes", "mix"], ["mixed"]),
        helper.make_node("Relu", ["mixed"], ["activated"]),
        helper.make_node("AveragePool", ["activated"], ["feature_map"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Clip", ["feature_map", "least"], ["clipped"]),
        helper.make_node("Pow", ["clipped", "power"], ["powered"]),
        helper.make_node("ReduceMean", ["powered"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Pow", ["mean", "root"], ["pooled"]),
        helper.make_node("Gemm", ["pooled", "projection", "bias"], ["embedding"], transB=1),
    ]
    side = input_side or "side"
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dimensions])]
    if feature_map:
        outputs.append(helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", CHANNELS, "h", "w"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", input_type, ["batch", side, side, 3])],
        outputs,
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.20 reads
    if input_size:
        helper.set_model_props(model, {INPUT_SIZE_KEY: input_size})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
