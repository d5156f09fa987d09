"""Where should the views be made? Measures both places side by side, through the real Triton.

  in Triton: the front sends one canvas (S x S x 3, S = 1.1 x input) and VIEWS; the model makes them.
  in front:  the front makes the views itself and sends every one to Triton (VIEWS = 1 each).

Prints, per view count: images/s, ms per image, and bytes sent to Triton per image, with ratios.
Usage: python -m tools.bench_views [--images DIR] [--count N] [--views 10 50] [--triton-url H:P]
"""

import argparse
import asyncio
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image

from service.config import Settings
from service.media.imaging import Limits, decode_canvas
from service.triton import contract
from service.triton.client import Hasher
from service.triton.process import BundledTriton

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "dev-images"


def load_view_maker():
    """make_views from the model's own code (its Triton-only import stubbed out)."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("sscd_model", ROOT / "model_repository/sscd/1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_views


async def run(arguments: argparse.Namespace) -> None:
    triton = Settings().triton
    canvas_size = contract.canvas_size(triton.input_size)
    files = sorted(p for p in Path(arguments.images).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    files = files[: arguments.count]
    canvases = [decode_canvas(f.read_bytes(), canvas_size, Limits(min_side=1)) for f in files]
    make_views = load_view_maker()
    bundled = None
    url = arguments.triton_url
    if not url:
        bundled = BundledTriton([triton.model], triton.model_repository)
        bundled.start()
        url = bundled.url
    hasher = Hasher([url], triton.model)
    while not all(ready for ready, _ in (await hasher.ready()).values()):
        await asyncio.sleep(0.5)

    async def in_triton(canvas: np.ndarray, views: int) -> int:
        await hasher.hash(canvas[None], [views], 120)
        return canvas.nbytes

    async def in_front(canvas: np.ndarray, views: int) -> int:
        # Each front-made view is scaled to the canvas side so the model's VIEWS=1 path embeds it as is.
        side = canvas_size
        made = make_views(canvas, views)
        resized = np.stack(
            [np.asarray(Image.fromarray(view).resize((side, side), Image.Resampling.BILINEAR)) for view in made]
        )
        chunks = [resized[i : i + contract.MAX_BATCH] for i in range(0, len(resized), contract.MAX_BATCH)]
        await asyncio.gather(*(hasher.hash(chunk, [1] * len(chunk), 120) for chunk in chunks))
        return made.nbytes  # what the front would send at the network's input size

    print(f"{len(files)} images from {arguments.images}; model {triton.model}, input {triton.input_size}")
    print(f"{'views':>5} {'where':>9} {'img/s':>7} {'ms/img':>7} {'KB/img':>8}   ratio (in Triton / in front)")
    await in_triton(canvases[0], 10)  # warm up
    for views in arguments.views:
        results = {}
        for name, method in (("in Triton", in_triton), ("in front", in_front)):
            started = time.perf_counter()
            sent = [await method(canvas, views) for canvas in canvases]
            elapsed = time.perf_counter() - started
            results[name] = (len(canvases) / elapsed, 1000 * elapsed / len(canvases), np.mean(sent) / 1024)
            rate, ms, kb = results[name]
            print(f"{views:>5} {name:>9} {rate:>7.1f} {ms:>7.1f} {kb:>8.0f}")
        speed = results["in Triton"][0] / results["in front"][0]
        wire = results["in front"][2] / results["in Triton"][2]
        print(f"{'':>5} {'':>9} speed x{speed:.2f} in Triton; {wire:.0f}x fewer bytes to Triton")
    await hasher.close()
    if bundled:
        await bundled.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(DEFAULT_IMAGES if DEFAULT_IMAGES.exists() else ROOT / "tests/images"))
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--views", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--triton-url", default="")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
