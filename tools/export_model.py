"""Turn an SSCD TorchScript file into an ONNX model for --model-file, fp32 or fp16, with its feature map.

  pip install -e '.[export]'     # torch: never a default dependency
  python -m tools.export_model sscd_disc_mixup.torchscript.pt sscd.onnx [--fp16] [--input-size 224]

Download the TorchScript yourself from Meta's SSCD repository (github.com/facebookresearch/sscd-copy-detection,
"Pretrained models"; the weights are MIT licensed). The file must hold SSCD's `Model`: a `backbone`
giving the last feature map [N, C, H, W] and `embeddings` (GeM pooling, a linear projection, L2
normalisation) from it, as Meta's files do.

The ONNX written meets the contract of service/triton/model_file.py: uint8 [batch, height, width,
3] RGB in (scaled and normalised inside the graph, as SSCD was trained), the embedding as the first
output and the feature map as the second, so that --region-windows can pool windows of it; height
and width free; the input side in the metadata. For Triton's ONNX Runtime with the CUDA or TensorRT
provider on a GPU (docs/deployment.md); fp16 halves the weights and the maths.
"""

import argparse
import sys
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


def served(network, half: bool):
    """The network behind the contract's input: uint8 NHWC pixels in, (embedding, feature map) out."""
    import torch

    class Served(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.embeddings = network.backbone, network.embeddings  # traced as this module's own
            kind = torch.float16 if half else torch.float32
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=kind).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=kind).view(1, 3, 1, 1) * 255)

        def forward(self, image):
            pixels = image.permute(0, 3, 1, 2).to(self.mean.dtype)
            feature_map = self.backbone((pixels - self.mean) / self.std)
            return self.embeddings(feature_map), feature_map

    model = Served().eval()
    # Scripted as the network is: the exporter then reads one graph instead of tracing into it.
    return torch.jit.script(model.half() if half else model)


def export(torchscript: Path, out: Path, half: bool = False, input_size: int = 224) -> Path:
    """Writes the ONNX model for the TorchScript file; returns `out`."""
    import onnx
    import torch

    from service.triton.model_file import INPUT_SIZE_KEY

    network = torch.jit.load(str(torchscript), map_location="cpu").eval()
    missing = [name for name in ("backbone", "embeddings") if not hasattr(network, name)]
    if missing:
        raise SystemExit(f"{torchscript} holds no {' or '.join(missing)}: not SSCD's Model (see this tool's help)")
    model = served(network, half)
    example = torch.zeros((1, input_size, input_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["image"],
            output_names=["embedding", "feature_map"],
            dynamic_axes={
                "image": {0: "batch", 1: "height", 2: "width"},
                "embedding": {0: "batch"},
                "feature_map": {0: "batch", 2: "rows", 3: "columns"},
            },
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: SSCD's files are TorchScript
        )
    written = onnx.load(str(out))
    onnx.helper.set_model_props(written, {INPUT_SIZE_KEY: str(input_size)})
    onnx.save(written, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("torchscript", type=Path, help="SSCD's TorchScript file (e.g. sscd_disc_mixup.torchscript.pt)")
    parser.add_argument("out", type=Path, help="the ONNX file to write")
    parser.add_argument("--fp16", action="store_true", help="half-precision weights and maths (for a GPU)")
    parser.add_argument("--input-size", type=int, default=224, help="the side the service resizes views to")
    arguments = parser.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("tools/export_model.py needs torch: pip install -e '.[export]'")
    export(arguments.torchscript, arguments.out, arguments.fp16, arguments.input_size)
    print(f"wrote {arguments.out}: serve it with `neardup serve --model-file {arguments.out} --region-windows`")


if __name__ == "__main__":
    main()
