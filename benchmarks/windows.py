"""What the region stage's windows cost in Triton, side by side in one run.

  python benchmarks/windows.py [--images DIR] [--requests 40]

Through the bundled Triton and the model as served (model_repository/), one request at a time,
each on a real picture: the whole query (one 224 px view of a 246 px canvas, what every Check
pays), three boxes (three such canvases: the most the boxes stage sends), and the windows (one
493 px canvas whose 448 px view's feature map is pooled into contract.WINDOW_COUNT windows), with
and without WINDOWS asked for (the larger view alone, then its pooling). Prints the median
milliseconds of each and its ratio to the whole query.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Settings  # noqa: E402
from service.triton import contract  # noqa: E402
from service.triton.process import BundledTriton  # noqa: E402

OUTPUTS = (contract.FEATURE, contract.THRESHOLD, contract.RUNTIME)


def canvas(path: Path, side: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BILINEAR))


def timed(client, model: str, canvases: np.ndarray, outputs: tuple[str, ...], requests: int) -> float:
    """Median milliseconds of one request of these canvases, one view each."""
    image = triton.InferInput(contract.IMAGE, list(canvases.shape), "UINT8")
    image.set_data_from_numpy(canvases)
    views = triton.InferInput(contract.VIEWS, [len(canvases), 1], "INT32")
    views.set_data_from_numpy(np.ones((len(canvases), 1), np.int32))
    asked = [triton.InferRequestedOutput(name) for name in outputs]
    client.infer(model, [image, views], outputs=asked)  # warm this shape up
    spent = []
    for _ in range(requests):
        started = time.perf_counter()
        client.infer(model, [image, views], outputs=asked)
        spent.append(1000 * (time.perf_counter() - started))
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "images")
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    settings = Settings().triton
    pictures = sorted(args.images.glob("*.jpg"))[:3]
    small, large = contract.canvas_size(settings.input_size), contract.canvas_size(contract.WINDOW_INPUT)
    bundled = BundledTriton([settings.model], settings.model_repository)
    process = bundled.spawn(subprocess.DEVNULL)
    try:
        client = triton.InferenceServerClient(bundled.url)
        deadline = time.monotonic() + 180
        while not _ready(client, settings.model):
            if time.monotonic() > deadline:
                raise SystemExit("Triton did not load the model in 3 minutes")
            time.sleep(0.5)
        one = np.stack([canvas(pictures[0], small)])
        three = np.stack([canvas(path, small) for path in pictures])
        larger = np.stack([canvas(pictures[0], large)])
        rows = {
            f"the whole query (1 canvas of {small} px)": timed(client, settings.model, one, OUTPUTS, args.requests),
            f"three boxes (3 canvases of {small} px)": timed(client, settings.model, three, OUTPUTS, args.requests),
            f"the larger view alone (1 canvas of {large} px)": timed(
                client, settings.model, larger, OUTPUTS, args.requests
            ),
            f"the windows ({contract.WINDOW_COUNT} pooled from it)": timed(
                client, settings.model, larger, (*OUTPUTS, contract.WINDOWS), args.requests
            ),
        }
    finally:
        process.terminate()
        process.wait(30)
        bundled.stop_files()
    print(f"{settings.model} through the bundled Triton, median of {args.requests} requests each")
    whole = next(iter(rows.values()))
    for name, spent in rows.items():
        print(f"  {name:<52} {spent:8.1f} ms  {spent / whole:5.2f}x the whole query")


def _ready(client, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except Exception:  # not listening yet
        return False


if __name__ == "__main__":
    main()
