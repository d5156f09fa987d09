"""How thumbnails rank their pictures among the enrolled pictures as they are and as small views.

  python -m tools.thumbnail_views --seed 0 --catalogue ../shared/data/clipart --twin-share 0.3

A 16-32 px thumbnail, enlarged to the model's canvas, is a blur whose descriptor is far from its
sharp original's: the search ranks the original first for about half of them, and no verification
can confirm a picture the search did not bring. The service therefore also enrols each picture as
a small view (storage/small_views.py). This measures, search by search, what that brings: the
benchmark of tools/evaluate.py (same arguments) is built, a service is started (only Hash is
called: nothing is enrolled), and every enrolled picture is embedded as it is and as a small view
(shrunk to --small-view-side px on its longest side, as enrolment does), and every `thumbnail`
query as it is. Per band of the query's longest side it prints how often the query's picture ranks
first, and within the NEIGHBOURS a Check verifies, among the enrolled pictures as they are
("plain"), as small views ("small") and by the better of the two ("either"); for the unenrolled
thumbnails, the median of their best similarity (how close a look-alike comes); and, searched
"plain" and "either", how many thumbnails a small query's confirmation (`confirmed`, simplified
from core/judging.py) declares a duplicate of their picture and of another. docs/quality-history.md has
the figures; tools/evaluate.py measures the service's own decision.
"""

import argparse
import concurrent.futures
import functools
import io
import json
import tempfile
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from service.core.decision import Policy
from service.core.stages.search import NEIGHBOURS
from service.media import verification
from service.media.imaging import Limits, decode
from service.media.preprocess import shrunk
from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.evaluate import add_benchmark_arguments, benchmark_of, image_data
from tools.evaluation.dataset import Benchmark
from tools.service_process import RunningService

SMALL_SIDE = Policy().small_view_side  # the longest side of a small view, in pixels
SIDE_BANDS = ((16, 24), (24, 32), (32, 48), (48, 65))  # a thumbnail's longest side: 16-64 px
SEARCHES = ("plain", "small", "either")
CONFIRMED_SEARCHES = ("plain", "either")


def small_view(data: bytes) -> bytes:
    """The picture as enrolment shrinks it for its small view, as a PNG."""
    out = io.BytesIO()
    shrunk(decode(data, max(Image.open(io.BytesIO(data)).size), Limits()), SMALL_SIDE).save(out, "PNG")
    return out.getvalue()


def embedded(stub, images: list[bytes], workers: int) -> list[np.ndarray | None]:
    """Each image's feature from the service's Hash (None: refused as too small)."""

    def feature(data: bytes) -> np.ndarray | None:
        try:
            return np.array(stub.Hash(pb.HashRequest(image=data), timeout=120).feature, np.float32)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return None

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(feature, images))


def confirmed(picture: Image.Image, neighbours: list[str], reference, policy: Policy) -> str | None:
    """The first neighbour (nearest first) a small query agrees with closely, as core/judging.py
    confirms one, simplified: the nearest within `verified_residual` whatever its score (the service
    allows more near the threshold), each other one also enlarged at least --thumbnail-enlargement;
    None when none does. `reference(key)` is a neighbour's verification reference."""
    for position, key in enumerate(neighbours):
        found = verification.residual(picture, reference(key))
        if found is None or not found.is_close(policy.verified_residual, policy.verified_colour):
            continue
        if position == 0 or found.judged.upscale >= policy.thumbnail_enlargement:
            return key
    return None


def measure(benchmark: Benchmark, stub, workers: int = 4) -> dict:
    """Ranks of the thumbnails' pictures under each search, by band of the query's longest side;
    the unenrolled thumbnails' best similarities; what confirmation declares under two searches."""
    keys = list(benchmark.enrol)
    sources = [image_data(benchmark.enrol[key]) for key in keys]
    plain = np.stack(embedded(stub, sources, workers))
    small = np.stack(embedded(stub, [small_view(data) for data in sources], workers))
    queries = [query for query in benchmark.queries if query.family == "thumbnail"]
    features = embedded(stub, [query.data for query in queries], workers)
    bands = {f"{low}-{high - 1} px": {"positives": 0, "refused": 0} | {name: [0, 0] for name in SEARCHES}
             for low, high in SIDE_BANDS}  # fmt: skip
    best_negative: dict[str, list[float]] = {name: [] for name in SEARCHES}
    declared = {name: {"copies": 0, "wrong": 0} for name in CONFIRMED_SEARCHES}
    policy, limits = Policy(), Limits()
    source_of = dict(zip(keys, sources, strict=True))
    references = functools.cache(
        lambda key: verification.reference(decode(source_of[key], verification.QUERY_SIDE, limits))
    )
    for query, feature in zip(queries, features, strict=True):
        similarities = {}
        if feature is not None:  # else refused: a side under --min-image-side
            similarities = {"plain": plain @ feature, "small": small @ feature}
            similarities["either"] = np.maximum(similarities["plain"], similarities["small"])
            picture = decode(query.data, verification.QUERY_SIDE, limits)
            for name in CONFIRMED_SEARCHES:
                neighbours = [keys[at] for at in np.argsort(-similarities[name])[:NEIGHBOURS]]
                key = confirmed(picture, neighbours, references, policy)
                declared[name]["copies"] += key in query.expected
                declared[name]["wrong"] += key is not None and key not in query.expected
        if not query.positive:
            for name, values in similarities.items():
                best_negative[name].append(float(values.max()))
            continue
        side = max(Image.open(io.BytesIO(query.data)).size)
        band = bands[next(f"{low}-{high - 1} px" for low, high in SIDE_BANDS if low <= side < high)]
        band["positives"] += 1
        band["refused"] += feature is None
        right = np.array([key in query.expected for key in keys])
        for name, values in similarities.items():
            rank = int((values > values[right].max()).sum())  # pictures ranked above its best key
            band[name][0] += rank == 0
            band[name][1] += rank < NEIGHBOURS
    return {
        "bands": {
            label: {"positives": band["positives"], "refused": band["refused"]}
            | {name: {"first": band[name][0], "within": band[name][1]} for name in SEARCHES}
            for label, band in bands.items()
        },
        "negatives": len(best_negative["plain"]),
        "declared": declared,
        "negatives_best_similarity": {
            name: float(np.median(values)) if values else None for name, values in best_negative.items()
        },
    }


def report(result: dict) -> str:
    lines = [f"thumbnail queries ranking their picture first / within {NEIGHBOURS} neighbours:"]
    for label, band in result["bands"].items():
        count = max(band["positives"], 1)
        shares = ", ".join(
            f"{name} {band[name]['first'] / count:.2f} / {band[name]['within'] / count:.2f}" for name in SEARCHES
        )
        lines.append(f"  {label:9s} {band['positives']:4d} queries ({band['refused']} refused): {shares}")
    medians = result["negatives_best_similarity"]
    lines.append(
        f"unenrolled thumbnails ({result['negatives']}), median best similarity: "
        + ", ".join(f"{name} {value:.2f}" if value is not None else f"{name} -" for name, value in medians.items())
    )
    lines.append(
        "confirmed as a small query is (simplified), copies of their picture / wrong: "
        + ", ".join(f"{name} {counts['copies']} / {counts['wrong']}" for name, counts in result["declared"].items())
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(parser)
    parser.add_argument("--workers", type=int, default=4, help="concurrent Hash calls")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    arguments = parser.parse_args()
    benchmark = benchmark_of(arguments)
    with tempfile.TemporaryDirectory() as data_dir:
        service = RunningService(Path(data_dir) / "data").wait_serving()
        try:
            result = measure(benchmark, service.stub, arguments.workers)
        finally:
            service.stop()
    print(report(result))
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
