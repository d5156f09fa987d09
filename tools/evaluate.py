"""Near-duplicate detection benchmark, through the real service.

  python tools/evaluate.py [--images DIR] [--seed 0] [--service-flags "--decision global ..."] [--out DIR]

From a folder of images (and its manifest.json, whose `group` ties files showing the same
picture), it splits the groups into references (enrolled), a background set (features kept
for score normalisation) and distractors (never enrolled); makes positive queries by
transforming each reference with every family in tools/evaluation/transforms.py (plus the
other files of its group, "natural"), and negative queries from the distractors and their
transforms. It starts `neardup serve` on a fresh data directory, enrols the references,
rebuilds the index, sends every query through `Check`, and scores every decision rule from
the answers, with PDQ and pHash beside them. Seeded: the same seed gives the same numbers.

Writes OUT/results.json, OUT/pr.png (precision-recall curves), OUT/failures.html and
OUT/queries.jsonl (every query's answer and scores, for analysis).
"""

import argparse
import concurrent.futures
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.core.decision import Candidate, Policy, decide  # noqa: E402
from service.media.geometry import MIN_INLIERS  # noqa: E402
from service.proto.neardup.v1 import neardup_pb2 as pb  # noqa: E402
from service.storage.snapshots import rebuild  # noqa: E402
from tools.build_background import build_background  # noqa: E402
from tools.evaluation.baselines import HASHES, HammingIndex  # noqa: E402
from tools.evaluation.metrics import average_precision, pr_curve, precision_recall_of, recall_at_precision  # noqa: E402
from tools.evaluation.report import plot, write_failures  # noqa: E402
from tools.evaluation.transforms import FAMILIES, apply  # noqa: E402
from tools.service_process import RunningService  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "dev-images"
PRECISIONS = (0.99, 0.999)
BETAS = (0.5, 1.0)
# The policies every query is scored under (with the service's default parameters otherwise).
POLICIES = {
    "global": Policy("global"),
    "seed": Policy("seed"),
    "clamped": Policy("clamped"),
    **{f"margin(beta={beta})": Policy("margin", margin_beta=beta) for beta in BETAS},
    **{f"normalized(beta={beta})": Policy("normalized", normalization_beta=beta) for beta in BETAS},
}
GEOMETRIC_BANDS = (0.0, 0.05, 0.1, 0.2, 0.4, 10.0)


@dataclass
class Query:
    family: str
    source: str  # the file it was made from
    expected: str | None  # the reference key it copies; None for a negative
    data: bytes = b""
    answer: dict = field(default_factory=dict)


def split(images: Path, seed: int, reference_share: float, background_share: float):
    """(reference files, natural copies {file: reference}, background files, distractor files)."""
    manifest_path = images / "manifest.json"
    if manifest_path.exists():
        entries = json.loads(manifest_path.read_text())
    else:
        entries = [{"file": p.name, "group": p.name, "canonical": True} for p in sorted(images.glob("*.jpg"))]
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["group"], []).append(entry)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    cut_references = round(len(names) * reference_share)
    cut_background = cut_references + round(len(names) * background_share)
    references, natural = [], {}
    for name in names[:cut_references]:
        members = sorted(groups[name], key=lambda e: not e.get("canonical", False))
        references.append(members[0]["file"])
        natural.update({member["file"]: members[0]["file"] for member in members[1:]})
    background = [e["file"] for name in names[cut_references:cut_background] for e in groups[name]]
    distractors = [e["file"] for name in names[cut_background:] for e in groups[name]]
    return references, natural, background, distractors


def make_queries(images: Path, seed: int, references, natural, distractors) -> list[Query]:
    queries = []
    for source, positive in [(r, True) for r in references] + [(d, False) for d in distractors]:
        image = Image.open(images / source).convert("RGB")
        if not positive:
            queries.append(Query("original", source, None, (images / source).read_bytes()))
        for family in FAMILIES:
            rng = random.Random(f"{seed} {source} {family}")
            queries.append(Query(family, source, source if positive else None, apply(family, image, rng)))
    queries += [Query("natural", copy, reference, (images / copy).read_bytes()) for copy, reference in natural.items()]
    return queries


def run_checks(service: RunningService, queries: list[Query], workers: int) -> None:
    def check(query: Query) -> None:
        try:
            reply = service.stub.Check(pb.CheckRequest(image=query.data, top_k=2), timeout=120)
        except grpc.RpcError as error:  # e.g. a transform left fewer pixels than the service accepts
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            query.answer = {"keys": [], "distances": [2.0], "thresholds": [0.0], "is_duplicate": False,
                            "score": float("-inf"), "background": 0.0, "inliers": -1,
                            "rejected": error.details()}  # fmt: skip
            return
        query.answer = {
            "keys": [m.key for m in reply.matches],
            "distances": [m.distance for m in reply.matches],
            "thresholds": [m.threshold for m in reply.matches],
            "is_duplicate": reply.is_duplicate,
            "score": reply.score,
            "background": reply.background_similarity,
            "inliers": reply.matches[0].inliers if reply.matches else -1,
        }

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(check, queries), start=1):
            if done % 500 == 0:
                print(f"  checked {done}/{len(queries)}", flush=True)


def rule_scores(query: Query) -> dict[str, float]:
    """Every policy's score for the query, from one Check answer, by the service's own rules."""
    a = query.answer
    candidates = [Candidate(d, t) for d, t in zip(a["distances"], a["thresholds"], strict=True)]
    return {name: decide(policy, candidates, a["background"]).score for name, policy in POLICIES.items()}


def summarise(name: str, scores, correct, families, positives_by_family, negatives_mask) -> dict:
    scores, correct = np.asarray(scores), np.asarray(correct)
    positives = sum(positives_by_family.values())
    curve = pr_curve(scores, correct, positives)
    result = {"uap": average_precision(curve)}
    for precision in PRECISIONS:
        recall, threshold = recall_at_precision(curve, precision)
        result[f"recall@p{precision}"] = recall
        result[f"threshold@p{precision}"] = threshold
    result["families"] = {}
    for family, count in positives_by_family.items():
        mask = (np.asarray(families) == family) | negatives_mask
        family_curve = pr_curve(scores[mask], correct[mask], count)
        result["families"][family] = recall_at_precision(family_curve, 0.99)[0]
    result["curve"] = {"precision": curve.precision.tolist()[::5], "recall": curve.recall.tolist()[::5]}
    print(f"  {name:<22} µAP {result['uap']:.3f}  R@P99 {result['recall@p0.99']:.3f}  "
          f"R@P99.9 {result['recall@p0.999']:.3f}", flush=True)  # fmt: skip
    return result


def geometric_bands(queries: list[Query], correct, positives: int, threshold: float) -> dict:
    """Precision and recall at the rule's P99.9 threshold when scores up to `band` below it are
    decided by the geometric check instead; needs a run with --geometric-band wide enough
    (e.g. 10) that the service reported inliers for every query it did not accept."""
    if not all(q.answer["inliers"] >= 0 for q in queries if q.answer["keys"] and q.answer["score"] < threshold):
        return {}  # the service did not check every score below the threshold
    scores = np.array([q.answer["score"] for q in queries])
    geometric = np.array([q.answer["inliers"] >= MIN_INLIERS for q in queries])
    result = {"threshold": threshold}
    for band in GEOMETRIC_BANDS:
        decided = (scores >= threshold) | ((scores >= threshold - band) & geometric)
        precision, recall = precision_recall_of(decided, correct, positives)
        result[f"band {band}"] = {"precision": precision, "recall": recall}
        print(f"  geometric check within {band} of {threshold:.3f}: precision {precision:.4f}, recall {recall:.4f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.exists() else ROOT / "tests/images"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-share", type=float, default=0.7)
    parser.add_argument("--background-share", type=float, default=0.1)
    parser.add_argument("--sample", type=int, default=0, help="check at most this many queries (0: all)")
    parser.add_argument("--service-flags", default="", help="extra flags for `neardup serve`")
    parser.add_argument("--workers", type=int, default=4, help="concurrent Check calls")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "eval-out")
    arguments = parser.parse_args()
    started = time.perf_counter()
    args_out = arguments.out
    args_out.mkdir(parents=True, exist_ok=True)

    references, natural, background, distractors = split(
        arguments.images, arguments.seed, arguments.reference_share, arguments.background_share
    )
    queries = make_queries(arguments.images, arguments.seed, references, natural, distractors)
    if arguments.sample and arguments.sample < len(queries):
        queries = random.Random(arguments.seed).sample(queries, arguments.sample)
    positives = [q for q in queries if q.expected]
    print(f"{len(references)} references, {len(background)} background, {len(distractors)} distractor images; "
          f"{len(positives)} positive and {len(queries) - len(positives)} negative queries", flush=True)  # fmt: skip

    flags = arguments.service_flags.split()
    with tempfile.TemporaryDirectory(prefix="neardup-eval-") as work:
        data_dir = Path(work) / "data"
        service = RunningService(data_dir, *flags).wait_serving()
        stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
        build_background(service.stub, [arguments.images / f for f in background], data_dir, progress=False)
        enrol_started = time.perf_counter()
        requests = (pb.EnrollRequest(key=f, image=(arguments.images / f).read_bytes()) for f in references)
        results = list(service.stub.Enroll(requests, timeout=3600))
        enrol_seconds = time.perf_counter() - enrol_started
        assert all(r.status == pb.EnrollResult.ENROLLED for r in results), [r for r in results if r.error]
        service.stop()
        rebuild(data_dir, progress=False)
        service = RunningService(data_dir, *flags).wait_serving()  # loads the index and the background set
        check_started = time.perf_counter()
        run_checks(service, queries, arguments.workers)
        check_seconds = time.perf_counter() - check_started
        rule = service.stub.Check(pb.CheckRequest(image=queries[0].data), timeout=60).decision_rule
        service.stop()

    correct = [bool(q.expected) and bool(q.answer["keys"]) and q.answer["keys"][0] == q.expected for q in queries]
    families = [q.family for q in queries]
    positives_by_family: dict[str, int] = {}
    for q in positives:
        positives_by_family[q.family] = positives_by_family.get(q.family, 0) + 1
    negatives_mask = np.array([q.expected is None for q in queries])
    per_query = [rule_scores(q) | {f"service ({rule})": q.answer["score"]} for q in queries]
    print("rules (from the service's answers):")
    results = {
        name: summarise(name, [s[name] for s in per_query], correct, families, positives_by_family, negatives_mask)
        for name in per_query[0]
    }
    decided = [q.answer["is_duplicate"] for q in queries]
    precision, recall = precision_recall_of(decided, correct, len(positives))
    default = {"rule": rule, "precision": precision, "recall": recall, "families": {}}
    for family in positives_by_family:
        mask = (np.asarray(families) == family) | negatives_mask
        default["families"][family] = precision_recall_of(
            np.asarray(decided)[mask], np.asarray(correct)[mask], positives_by_family[family]
        )[1]
    print(f"service decision ({rule}): precision {precision:.4f}, recall {recall:.4f}")
    geometric = geometric_bands(queries, correct, len(positives), results[f"service ({rule})"]["threshold@p0.999"])

    if not arguments.no_baselines:
        print("baselines:")
        for name, hash_bits in HASHES.items():
            index = HammingIndex(references, [hash_bits((arguments.images / r).read_bytes()) for r in references])
            nearest = [index.nearest(hash_bits(q.data)) for q in queries]
            baseline_correct = [
                bool(q.expected) and key == q.expected for q, (key, _) in zip(queries, nearest, strict=True)
            ]
            scores = [-distance for _, distance in nearest]
            results[name] = summarise(name, scores, baseline_correct, families, positives_by_family, negatives_mask)

    write_failures(
        args_out / "failures.html",
        arguments.images,
        queries,
        [q.answer["score"] for q in queries],
        correct,
        rule,
    )
    plot(args_out / "pr.png", results)
    summary = {
        "seed": arguments.seed,
        "images": str(arguments.images),
        "service_flags": arguments.service_flags,
        "stats": {
            "model": stats.model,
            "input_size": stats.input_size,
            "views_per_check": stats.views_per_check,
            "views_per_enroll": stats.views_per_enroll,
        },  # fmt: skip
        "counts": {
            "references": len(references),
            "background": len(background),
            "distractors": len(distractors),
            "positives": len(positives),
            "negatives": len(queries) - len(positives),
        },  # fmt: skip
        "timing": {
            "enrol_ms_per_image": 1000 * enrol_seconds / len(references),
            "check_ms_per_query": 1000 * check_seconds / len(queries),
            "workers": arguments.workers,
        },  # fmt: skip
        "default_decision": default,
        "geometric_check": geometric,
        "rejected_queries": sum("rejected" in q.answer for q in queries),
        "rules": {name: {k: v for k, v in r.items() if k != "curve"} for name, r in results.items()},
        "seconds": time.perf_counter() - started,
    }
    (args_out / "results.json").write_text(json.dumps(summary, indent=1))
    with open(args_out / "queries.jsonl", "w") as out:
        for query, scores in zip(queries, per_query, strict=True):
            record = {"family": query.family, "source": query.source, "expected": query.expected}
            out.write(json.dumps(record | query.answer | {"scores": scores}) + "\n")
    print(f"wrote {args_out}/results.json, pr.png, failures.html in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
