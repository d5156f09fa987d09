"""What verifying one candidate pair costs as a Check pays it, side by side with another checkout's
code; what the region stage's box search costs beside it; what a record stores for verification.

  python -m benchmarks.verification [--images DIR] [--catalogue DIR] [--pairs 150] [--beside DIR]

Real pictures, three kinds of pair: a copy of a dev image (re-encoded, resized, cropped or
mirrored) against the image's reference; another dev image against it (unrelated); and, with
--catalogue (the clipart set), a drawing against another drawing of its category that is not the
same picture (a look-alike: what a Check verifies most, since its candidates are its nearest).
Each pair is timed on one thread as a Check pays it now: the query's side prepared once per Check
(verification.QueryPicture, not counted), the record's side made from its reference and the
keypoints stored at enrolment (verification.Candidate), compared as a duplicate's score is
verified (every residual counts) and as a confirmation asks (only a close match counts:
`only_close`); then for a record enrolled before keypoints were stored (made from the reference);
and, with --beside, through that checkout's verification, its query prepared once too and its
record made from the reference, as that code did. Prints each kind's median and p90 per pair.
"""

import argparse
import importlib
import importlib.machinery
import importlib.util
import io
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.bench import DEFAULT_IMAGES
from service.media import insets, verification
from service.media.preprocess import REGION_DECODE_SCALE
from service.triton.contract import canvas_size

TRANSFORMS = {
    "re-encoded": lambda image: _jpeg(image, 30),
    "resized": lambda image: image.resize((max(1, image.width // 2), max(1, image.height // 2))),
    "cropped": lambda image: image.crop((image.width // 8, image.height // 8, image.width, image.height)),
    "mirrored": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}
LEFT_OUT_CATEGORIES = ("shapes/stars",)  # near-identical rings (the clipart README)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def _opened(path: Path, side: int) -> Image.Image:
    picture = Image.open(path).convert("RGB")
    picture.thumbnail((side, side))
    return picture


def verification_of(checkout: Path):
    """That checkout's media/verification.py, with the modules it imports, loaded beside this one's
    (its `service` package found in that folder; its own imports resolve through the package)."""
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "service"}
    for name in ours:
        del sys.modules[name]
    try:
        spec = importlib.machinery.PathFinder.find_spec("service", [str(checkout)])
        sys.modules["service"] = package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
        return importlib.import_module("service.media.verification")
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "service"]:
            del sys.modules[name]
        sys.modules.update(ours)


def timed(call: Callable) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def prepared(module, query: Image.Image):
    """A query's side of verification made, as once per Check."""
    made = module.QueryPicture(query)
    for shown in made.shown:
        _ = (shown.lab, shown.points, shown.ecc_lab)  # made now, not timed
    return made


def pair_costs(query: Image.Image, reference: bytes, beside) -> dict[str, float]:
    """Seconds for one pair each way (see the module's docstring)."""
    query_side, points = prepared(verification, query), verification.reference_points(reference)
    grey = query_side.has_no_colour

    def compared(stored: bytes, only_close: bool):
        candidate = verification.candidate(reference, grey, stored)
        return verification.compared(query_side, candidate, only_close=only_close)

    costs = {
        "verified": timed(lambda: compared(points, False)),
        "confirmed": timed(lambda: compared(points, True)),
        "confirmed, no points stored": timed(lambda: compared(b"", True)),
    }
    if beside is not None:
        theirs = prepared(beside, query)
        costs["beside"] = timed(lambda: beside.compared(theirs, beside.candidate(reference, theirs.has_no_colour)))
    return costs


def look_alikes(catalogue: Path, count: int, rng: random.Random) -> list[tuple[Path, Path]]:
    """Pairs of drawings of one category that are not the same picture (different groups)."""
    by_category: dict[str, list[dict]] = {}
    for entry in json.loads((catalogue / "manifest.json").read_text()):
        if not entry["category"].startswith(LEFT_OUT_CATEGORIES):
            by_category.setdefault(entry["category"], []).append(entry)
    categories = [name for name, entries in by_category.items() if len({e["group"] for e in entries}) > 1]
    pairs = []
    while len(pairs) < count:
        entries = by_category[rng.choice(categories)]
        first, second = rng.sample(entries, 2)
        if first["group"] != second["group"]:
            pairs.append((catalogue / first["file"], catalogue / second["file"]))
    return pairs


def report(kind: str, costs: list[dict[str, float]]) -> None:
    ms = {way: 1000 * np.array([cost[way] for cost in costs]) for way in costs[0]}
    print(f"{kind} ({len(costs)} pairs), median / p90 ms per pair:")
    for way, values in ms.items():
        ratio = ""
        if "beside" in ms and way != "beside":
            ratio = f" ({np.median(ms['beside']) / np.median(values):.2f}x less than beside)"
        print(f"  {way:28s} {np.median(values):6.1f} / {np.percentile(values, 90):6.1f}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--catalogue", type=Path, help="the clipart set: look-alike pairs of drawings too")
    parser.add_argument("--pairs", type=int, default=150, help="pairs of each kind")
    parser.add_argument("--beside", type=Path, help="another checkout whose verification is timed too")
    arguments = parser.parse_args()
    cv2.setNumThreads(1)
    beside = verification_of(arguments.beside.resolve()) if arguments.beside else None
    files = sorted(arguments.images.glob("*.jpg"))
    rng = random.Random(0)
    kinds: dict[str, list[dict[str, float]]] = {"copy": [], "unrelated": [], "look-alike": []}
    box_times, sizes, points_sizes = [], [], []
    for _ in range(arguments.pairs):
        original, other = (Image.open(path).convert("RGB") for path in rng.sample(files, 2))
        original.thumbnail((1024, 1024))
        decoded = original.copy()
        decoded.thumbnail((canvas_size(224) * REGION_DECODE_SCALE,) * 2)  # the default input side
        box_times.append(timed(lambda decoded=decoded: insets.boxes(decoded)))
        reference = verification.reference(original)
        sizes.append(len(reference))
        points_sizes.append(len(verification.reference_points(reference)))
        query = TRANSFORMS[rng.choice(list(TRANSFORMS))](original)
        for kind, picture in (("copy", query), ("unrelated", other)):
            picture.thumbnail((verification.QUERY_SIDE, verification.QUERY_SIDE))
            kinds[kind].append(pair_costs(picture, reference, beside))
    if arguments.catalogue:
        for enrolled, query in look_alikes(arguments.catalogue, arguments.pairs, rng):
            reference = verification.reference(_opened(enrolled, 1024))
            kinds["look-alike"].append(pair_costs(_opened(query, verification.QUERY_SIDE), reference, beside))
    for kind, costs in kinds.items():
        if costs:
            report(kind, costs)
    box_ms = 1000 * np.array(box_times)
    print(f"boxes looked for in one picture: median {np.median(box_ms):.1f} ms, p90 {np.percentile(box_ms, 90):.1f} ms")
    print(
        f"stored per record for verification: reference median {np.median(sizes) / 1024:.1f} KiB (max "
        f"{max(sizes) / 1024:.1f}), its keypoints median {np.median(points_sizes) / 1024:.1f} KiB (max "
        f"{max(points_sizes) / 1024:.1f})"
    )


if __name__ == "__main__":
    main()
