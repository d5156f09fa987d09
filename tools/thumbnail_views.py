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
thumbnails, the median of their best similarity (how close a look-alike comes); and how many
thumbnails the decision declares a duplicate of their picture and of another, judged by the code
the service's stages run (core/judging.py over a temporary store of the enrolled pictures): by the
verification stage alone ("plain"), and then, as a Check goes on, by the small views' stage
("with small views"). docs/quality-history.md has the figures; tools/evaluate.py measures the
service's whole decision.
"""

import argparse
import concurrent.futures
import hashlib
import io
import json
import tempfile
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from service.config import Settings
from service.core.decision import Policy
from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.search import NEIGHBOURS
from service.media.imaging import Limits, decode
from service.media.preprocess import Preprocessor, shrunk
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.records import Enrolment
from service.storage.small_views import SmallViews
from service.storage.store import Store
from tools.evaluate import add_benchmark_arguments, benchmark_of, image_data
from tools.evaluation.dataset import Benchmark
from tools.service_process import RunningService

SMALL_SIDE = Policy().small_view_side  # the longest side of a small view, in pixels
SIDE_BANDS = ((16, 24), (24, 32), (32, 48), (48, 65))  # a thumbnail's longest side: 16-64 px
SEARCHES = ("plain", "small", "either")
JUDGED = ("plain", "with small views")
MODEL = "thumbnail-views"  # the temporary store's model identity
# What the service makes of an image's bytes: its references, a query's picture.
PREPROCESSOR = Preprocessor(Settings().canvas_size, Limits(), None, keypoints=False, references=True)


def small_view(data: bytes) -> bytes:
    """The picture as enrolment shrinks it for its small view (from its decode for the canvas), as a PNG."""
    out = io.BytesIO()
    shrunk(decode(data, PREPROCESSOR.canvas_size, Limits()), SMALL_SIDE).save(out, "PNG")
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


class Judged:
    """The enrolled pictures in a temporary store (their features, references and small views), and
    what the verification and small-views stages (core/judging.py) declare a thumbnail a duplicate of."""

    def __init__(self, folder: Path, keys: list[str], sources: list[bytes], plain: np.ndarray, small: np.ndarray):
        self.store = Store(folder)
        described = [PREPROCESSOR.describe(data) for data in sources]
        enrolments = [
            Enrolment(
                key,
                hashlib.sha256(data).digest(),
                feature,
                0.0,
                {},
                reference=made.reference,
                reference_points=made.reference_points,
                small_view=view,
            )
            for key, data, made, feature, view in zip(keys, sources, described, plain, small, strict=True)
        ]
        self.store.enroll(MODEL, enrolments)
        with self.store.read() as view:
            self.records = [view.by_key(key) for key in keys]
        self.small_views = SmallViews.following(self.store)
        self.judge = Judge(self.store, Policy())

    def declared(self, query: Query, feature: np.ndarray, similarities: np.ndarray) -> dict:
        """Per stage (JUDGED), the keys declared duplicates of the query ([]: none)."""
        judge, policy_of = self.judge, self.judge.policies()
        nearest = [
            (self.records[at], float(np.sqrt(max(2.0 - 2.0 * similarities[at], 0.0))))
            for at in np.argsort(-similarities)[:NEIGHBOURS]
        ]
        search = judge.verified(judge.decided(nearest, policy_of, 0.0), lambda: query.picture, policy_of, query.side)
        plain = [match.record.key for match in search.matches(search.decision.each) if match.is_duplicate]
        if plain:
            return {"plain": plain, "with small views": plain}
        with self.store.read() as view:
            found = [(view.by_id(id_), distance) for id_, distance in self.small_views.nearest(feature, NEIGHBOURS)]
        small = judge.through_small_views(feature, found, 0.0, lambda: query.picture)
        return {
            "plain": [],
            "with small views": [m.record.key for m in small.matches(small.decision.each) if m.is_duplicate],
        }

    def close(self) -> None:
        self.store.close()


def measure(benchmark: Benchmark, stub, workers: int = 4) -> dict:
    """Ranks of the thumbnails' pictures under each search, by band of the query's longest side;
    the unenrolled thumbnails' best similarities; what the verification and small-views stages declare."""
    keys = list(benchmark.enrol)
    sources = [image_data(benchmark.enrol[key]) for key in keys]
    plain = np.stack(embedded(stub, sources, workers))
    small = np.stack(embedded(stub, [small_view(data) for data in sources], workers))
    queries = [query for query in benchmark.queries if query.family == "thumbnail"]
    features = embedded(stub, [query.data for query in queries], workers)
    bands = {
        f"{low}-{high - 1} px": {"positives": 0, "refused": 0} | {name: [0, 0] for name in SEARCHES}
        for low, high in SIDE_BANDS
    }
    best_negative: dict[str, list[float]] = {name: [] for name in SEARCHES}
    declared = {name: {"copies": 0, "wrong": 0} for name in JUDGED}
    with tempfile.TemporaryDirectory() as folder:
        judged = Judged(Path(folder), keys, sources, plain, small)
        try:
            answers = [
                judged.declared(Query(query.data, PREPROCESSOR), feature, plain @ feature)
                if feature is not None
                else None
                for query, feature in zip(queries, features, strict=True)
            ]
        finally:
            judged.close()
    for query, feature, answer in zip(queries, features, answers, strict=True):
        similarities = {}
        if feature is not None:  # else refused: a side under --min-image-side
            similarities = {"plain": plain @ feature, "small": small @ feature}
            similarities["either"] = np.maximum(similarities["plain"], similarities["small"])
            for name, keys_declared in answer.items():
                right = any(key in query.expected for key in keys_declared)
                declared[name]["copies"] += right
                declared[name]["wrong"] += bool(keys_declared) and not right
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
        "declared by the stages, copies of their picture / wrong: "
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
