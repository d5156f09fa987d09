"""What the region stage's windows cost, in Triton and per Check, side by side in one run.

  python -m benchmarks.windows --model-file MODEL.onnx [--images DIR] [--requests 40] [--checks 40]

The windows need a model that outputs its feature map (the packaged ones do not): MODEL.onnx is one
(tools/export_model.py writes SSCD's). Through the bundled Triton serving it, one request at a time,
each on a real picture: the whole query (one 224 px view of a 246 px canvas, what every Check
pays), three boxes (three such canvases: the most the boxes stage sends), and the windows (one
493 px canvas whose 448 px view's feature map is pooled into contract.WINDOW_COUNT windows), with
and without WINDOWS asked for (the larger view alone, then its pooling). Prints the median
milliseconds of each and its ratio to the whole query.

Then through the service, the same way with the windows off (--no-region-windows) and on: the
pictures of every other group enrolled (manifest.json's `group`: each file its own without one),
and Checks of the others' pictures re-encoded that match nothing as a whole (near-blank ones, never
searched by regions, left out), so every one pays the region stage: what a new picture costs, the
most the windows add. Prints the median milliseconds per Check, the views it reports, and the ratio.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from PIL import Image

from service.config import Settings
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.triton import contract
from service.triton.process import BundledTriton
from tests.conftest import reencoded
from tools.service_process import RunningService

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


def check_cost(groups: list[list[Path]], checks: int, model_file: Path, *flags: str) -> tuple[float, float]:
    """Median milliseconds and mean views of a Check of a picture that matches nothing, in a fresh
    service with `flags` and every other group of pictures enrolled."""
    enrolled = [path for group in groups[::2] for path in group]
    new = [reencoded(path.read_bytes()) for group in groups[1::2] for path in group]
    with tempfile.TemporaryDirectory() as folder:
        service = RunningService(Path(folder) / "data", "--model-file", str(model_file), *flags).wait_serving()
        try:
            requests = (pb.EnrollRequest(key=path.name, image=path.read_bytes()) for path in enrolled)
            list(service.stub.Enroll(requests, timeout=300))
            first = [service.stub.Check(pb.CheckRequest(image=data), timeout=60) for data in new]  # warm up
            unmatched = [data for data, reply in zip(new, first, strict=True) if matched_nothing_whole(reply)]
            spent, views = [], []
            for i in range(checks):
                started = time.perf_counter()
                reply = service.stub.Check(pb.CheckRequest(image=unmatched[i % len(unmatched)]), timeout=60)
                spent.append(1000 * (time.perf_counter() - started))
                views.append(reply.views)
            return statistics.median(spent), statistics.mean(views)
        finally:
            service.stop()


def matched_nothing_whole(reply: pb.CheckResponse) -> bool:
    """Did the Check go on to the region stage (the whole query no duplicate, not near-blank)?"""
    return not reply.low_information and not (reply.is_duplicate and not reply.HasField("region"))


def picture_groups(folder: Path) -> list[list[Path]]:
    """The folder's pictures, grouped by manifest.json's `group` when there is one."""
    pictures = sorted([*folder.glob("*.jpg"), *folder.glob("*.png")])
    manifest = folder / "manifest.json"
    group_of = {row["file"]: row["group"] for row in json.loads(manifest.read_text())} if manifest.exists() else {}
    groups: dict[str, list[Path]] = {}
    for path in pictures:
        groups.setdefault(group_of.get(path.name, path.name), []).append(path)
    return list(groups.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", type=Path, required=True, help="an ONNX model that outputs its feature map")
    parser.add_argument("--images", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "images")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument(
        "--checks", type=int, default=40, help="Checks through the service with the windows off and on (0: none)"
    )
    args = parser.parse_args()
    settings = Settings().triton
    model = contract.FILE_MODEL
    pictures = sorted(args.images.glob("*.jpg"))[:3]
    small, large = contract.canvas_size(settings.input_size), contract.canvas_size(contract.WINDOW_INPUT)
    bundled = BundledTriton([model], settings.model_repository, model_file=str(args.model_file))
    process = bundled.spawn(subprocess.DEVNULL)
    try:
        client = triton.InferenceServerClient(bundled.url)
        deadline = time.monotonic() + 180
        while not _ready(client, model):
            if time.monotonic() > deadline:
                raise SystemExit("Triton did not load the model in 3 minutes")
            time.sleep(0.5)
        one = np.stack([canvas(pictures[0], small)])
        three = np.stack([canvas(path, small) for path in pictures])
        larger = np.stack([canvas(pictures[0], large)])
        rows = {
            f"the whole query (1 canvas of {small} px)": timed(client, model, one, OUTPUTS, args.requests),
            f"three boxes (3 canvases of {small} px)": timed(client, model, three, OUTPUTS, args.requests),
            f"the larger view alone (1 canvas of {large} px)": timed(client, model, larger, OUTPUTS, args.requests),
            f"the windows ({contract.WINDOW_COUNT} pooled from it)": timed(
                client, model, larger, (*OUTPUTS, contract.WINDOWS), args.requests
            ),
        }
    finally:
        process.terminate()
        process.wait(30)
        bundled.stop_files()
    print(f"{args.model_file} through the bundled Triton, median of {args.requests} requests each")
    whole = next(iter(rows.values()))
    for name, spent in rows.items():
        print(f"  {name:<52} {spent:8.1f} ms  {spent / whole:5.2f}x the whole query")
    if not args.checks:
        return
    groups = picture_groups(args.images)
    boxes = check_cost(groups, args.checks, args.model_file, "--no-region-windows")
    windows = check_cost(groups, args.checks, args.model_file, "--region-windows")
    print(f"A Check of a picture that matches nothing, through the service, median of {args.checks}")
    for name, (spent, views) in (("the boxes only (--no-region-windows)", boxes), ("boxes and windows", windows)):
        print(f"  {name:<52} {spent:8.1f} ms  {views:5.2f} views  {spent / boxes[0]:5.2f}x the boxes only")


def _ready(client, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except Exception:  # not listening yet
        return False


if __name__ == "__main__":
    main()
