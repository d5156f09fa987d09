"""A model given as a file (--model-file): what the service reads from it, and the contract it must meet.

The contract (model_repository/onnx_file serves such a file in Triton):
- one input: uint8 [batch, height, width, 3] (RGB, NHWC), height and width free: the service sends
  views of several sides (the model's input side, the windows' 448 px view, a 32 px probe);
- its first output: float [batch, N], the embedding of a fixed width N (normalised or not: the
  model code normalises the mean of the views); the store, the index and the small views take
  that width;
- optionally a second output: float [batch, C, H, W], the last feature map, which the embedding
  pools with GeM and projects with one Gemm. With it, the region stage searches the windows of
  that map (tools/export_model.py writes such files); without it, it does not.
- the input side the model was trained at, in the metadata entry `neardup.input_size` (else the
  service's --input-size, 224 by default).
"""

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from service.triton import contract

INPUT_SIZE_KEY = "neardup.input_size"
FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto's codes
UINT8 = 2
IMAGE_SHAPE = "[batch, height, width, 3]"
MAX_DIMENSIONS = 4096


class ModelFileRefused(ValueError):
    """The file does not meet the contract; the message says how, in one line."""


@dataclass(frozen=True)
class ModelFile:
    path: Path
    input_size: int | None  # from its metadata, if it says
    feature_map: bool  # a second output: the windows can be searched
    dimensions: int = contract.DIMENSIONS  # the embedding's width

    @classmethod
    def read(cls, path: Path) -> "ModelFile":
        import onnx  # only for a file: the packaged models are known

        if not path.is_file():
            raise ModelFileRefused(f"{path} is not a file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # onnx raises DecodeError, ValueError, OSError... for a non-ONNX file
            raise ModelFileRefused(f"{path} is not an ONNX model ({type(error).__name__}: {error})") from None
        graph = model.graph
        weights = {tensor.name for tensor in graph.initializer}
        inputs = [tensor for tensor in graph.input if tensor.name not in weights]
        if len(inputs) != 1:
            raise ModelFileRefused(f"{path} has {len(inputs)} inputs; the contract is one, uint8 {IMAGE_SHAPE}")
        [image] = inputs
        shape = dims(image)
        if image.type.tensor_type.elem_type != UINT8 or len(shape) != 4 or shape[3] != 3:
            raise ModelFileRefused(
                f"{path}: its input {image.name!r} is {describe(image)}; the contract is uint8 {IMAGE_SHAPE}"
            )
        if isinstance(shape[1], int) or isinstance(shape[2], int):
            raise ModelFileRefused(
                f"{path}: its input's height and width are fixed ({describe(image)}); the service sends views of "
                "several sides: export it with both free"
            )
        outputs = list(graph.output)
        if not 1 <= len(outputs) <= 2:
            raise ModelFileRefused(f"{path} has {len(outputs)} outputs; the contract is an embedding, then maybe a map")
        embedding = outputs[0]
        if embedding.type.tensor_type.elem_type not in FLOAT_TYPES or len(dims(embedding)) != 2:
            raise ModelFileRefused(
                f"{path}: its first output {embedding.name!r} is {describe(embedding)}; the contract: float [batch, N]"
            )
        width = dims(embedding)[1]
        if not isinstance(width, int):
            width = inferred_width(model)
        if not isinstance(width, int) or not 1 <= width <= MAX_DIMENSIONS:
            raise ModelFileRefused(
                f"{path}: its embedding's width is {width!r}; the contract is a fixed width of 1 to {MAX_DIMENSIONS}"
            )
        if len(outputs) == 2 and (
            outputs[1].type.tensor_type.elem_type not in FLOAT_TYPES or len(dims(outputs[1])) != 4
        ):
            raise ModelFileRefused(
                f"{path}: its second output {outputs[1].name!r} is {describe(outputs[1])}; the contract is the "
                "feature map, float [batch, C, H, W]"
            )
        metadata = {entry.key: entry.value for entry in model.metadata_props}
        size = metadata.get(INPUT_SIZE_KEY)
        if size is not None and not (size.isdigit() and contract.MIN_CANVAS <= int(size) <= 4096):
            raise ModelFileRefused(f"{path}: its {INPUT_SIZE_KEY} {size!r} is not a side in pixels")
        return cls(path, int(size) if size else None, len(outputs) == 2, width)


def inferred_width(model) -> int | str:
    """The embedding's width as ONNX's shape inference finds it (a file may leave it unnamed)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference fails in many ways on graphs it does not know
        return "?"
    return dims(inferred.graph.output[0])[1]


@functools.lru_cache(maxsize=4)
def read_once(path: Path) -> ModelFile:
    """ModelFile.read, once per path (the settings ask for it where they need the width)."""
    return ModelFile.read(path)


def dims(tensor) -> list[int | str]:
    """A tensor's dimensions: ints where fixed, names (or '?') where free."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.type.tensor_type.shape.dim]


def describe(tensor) -> str:
    kind = {UINT8: "uint8", **FLOAT_TYPES}.get(tensor.type.tensor_type.elem_type, "another type")
    return f"{kind} {dims(tensor)}".replace("'", "")


@functools.lru_cache(maxsize=4)
def digest(path: Path, size: int, modified_ns: int) -> str:
    """The file's SHA-256 (size and time in the key: a file replaced in place is read again)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def identity(path: Path) -> str:
    """What the store records as the maker of a file model's features: its content, not its name."""
    status = path.stat()
    return f"{contract.FILE_MODEL}:{digest(path, status.st_size, status.st_mtime_ns)[:16]}"
