"""Near-duplicate detection benchmark, through the real service.

  python -m tools.evaluate [--images DIR] [--seed 0] [--catalogue DIR] [--twin-share 0.3]
                           [--service-flags "--decision global ..."] [--out DIR]

From a folder of images (and its manifest.json, whose `group` ties files showing the same
picture), it splits the groups into references (enrolled), a background set (features kept
for score normalisation) and distractors (never enrolled); makes positive queries by
transforming each reference with every family in tools/evaluation/transforms.py (plus the
other files of its group, "natural"), and negative queries from the distractors and their
transforms; optionally enrols a catalogue beside them and some references twice
(tools/evaluation/dataset.py says how). It starts `neardup serve` on a fresh data directory, enrols them,
rebuilds the index, sends every query through `Check`, and scores every decision rule from
the answers, with PDQ and pHash beside them. Seeded: the same seed gives the same numbers.

Writes OUT/results.json, OUT/pr.png (precision-recall curves), OUT/failures.html and
OUT/queries.jsonl (every query's answer and scores, for analysis).
"""

import argparse
import concurrent.futures
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from service.core.decision import Candidate, Policy, decide
from service.core.stages.search import NEIGHBOURS
from service.media.geometry import MIN_INLIERS
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.snapshots import rebuild
from tools.build_background import build_background
from tools.evaluation.baselines import HASHES, HammingIndex
from tools.evaluation.dataset import Benchmark, Query, build
from tools.evaluation.metrics import (
    average_precision,
    decided_key,
    pr_curve,
    precision_recall_of,
    recall_at_precision,
    where_missed,
)
from tools.evaluation.report import plot, write_failures
from tools.service_process import RunningService

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
    "margin(beta=0.5, twins not skipped)": Policy("margin", twin_similarity=2.0),
    **{f"normalized(beta={beta})": Policy("normalized", normalization_beta=beta) for beta in BETAS},
}
GEOMETRIC_BANDS = (0.0, 0.05, 0.1, 0.2, 0.4, 10.0)


def run_checks(service: RunningService, queries: list[Query], workers: int) -> None:
    def check(query: Query) -> None:
        try:
            reply = service.stub.Check(pb.CheckRequest(image=query.data, top_k=NEIGHBOURS), timeout=120)
        except grpc.RpcError as error:  # e.g. a transform left fewer pixels than the service accepts
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            query.answer = {"keys": [], "distances": [2.0], "thresholds": [0.0], "nearest_similarities": [1.0],
                            "is_duplicate": False, "score": float("-inf"), "background": 0.0, "inliers": -1,
                            "residual": None, "rejected": error.details()}  # fmt: skip
            return
        query.answer = {
            "keys": [m.key for m in reply.matches],
            "distances": [m.distance for m in reply.matches],
            "thresholds": [m.threshold for m in reply.matches],
            "nearest_similarities": [m.nearest_similarity for m in reply.matches],
            "is_duplicate": reply.is_duplicate,
            "score": reply.score,
            "background": reply.background_similarity,
            "inliers": reply.matches[0].inliers if reply.matches else -1,
            "low_information": reply.low_information,
            "region": reply.HasField("region"),
            "region_score": reply.region_score if reply.HasField("region_score") else None,
            "views": reply.views,
            "residual": reply.residual if reply.HasField("residual") else None,
            "declared": next((match.key for match in reply.matches if match.is_duplicate), None),
        }

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(check, queries), start=1):
            if done % 500 == 0:
                print(f"  checked {done}/{len(queries)}", flush=True)


def rule_scores(query: Query) -> dict[str, float]:
    """Every policy's score for the query, from one Check answer, by the service's own rules."""
    a = query.answer
    candidates = [
        Candidate(*values) for values in zip(a["distances"], a["thresholds"], a["nearest_similarities"], strict=True)
    ]
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


def enrol_and_check(benchmark: Benchmark, queries: list[Query], flags: list[str], workers: int) -> dict:
    """Runs a fresh service: background set, enrolment, a rebuilt index, then every query's Check."""
    with tempfile.TemporaryDirectory(prefix="neardup-eval-") as work:
        data_dir = Path(work) / "data"
        service = RunningService(data_dir, *flags).wait_serving()
        stats = service.stub.Stats(pb.StatsRequest(), timeout=10)
        build_background(service.stub, benchmark.background, data_dir, progress=False)
        enrol_started = time.perf_counter()
        requests = (pb.EnrollRequest(key=key, image=image_data(source)) for key, source in benchmark.enrol.items())
        results = list(service.stub.Enroll(requests, timeout=3600))
        enrol_seconds = time.perf_counter() - enrol_started
        assert all(r.status == pb.EnrollResult.ENROLLED for r in results), [r for r in results if r.error]
        service.stop()
        rebuild(data_dir, progress=False)
        service = RunningService(data_dir, *flags).wait_serving()  # loads the index and the background set
        check_started = time.perf_counter()
        run_checks(service, queries, workers)
        check_seconds = time.perf_counter() - check_started
        rule = service.stub.Check(pb.CheckRequest(image=queries[0].data), timeout=60).decision_rule
        service.stop()
    return {
        "rule": rule,
        "stats": {
            "model": stats.model,
            "input_size": stats.input_size,
            "views_per_check": stats.views_per_check,
            "views_per_enroll": stats.views_per_enroll,
        },
        "timing": {
            "enrol_ms_per_image": 1000 * enrol_seconds / len(benchmark.enrol),
            "check_ms_per_query": 1000 * check_seconds / len(queries),
            "workers": workers,
        },
    }


def image_data(source: Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else source.read_bytes()


def decision_report(queries: list[Query], correct: list[bool], rule: str) -> dict:
    """Precision and recall of the service's yes/no decision: overall, per family, by how many
    times the query's picture is enrolled, and by where the query comes from."""
    decided = np.array([q.answer["is_duplicate"] for q in queries])
    correct = np.asarray(correct)

    def measured(mask: np.ndarray) -> dict:
        positives = sum(q.positive for q, m in zip(queries, mask, strict=True) if m)
        precision, recall = precision_recall_of(decided[mask], correct[mask], positives)
        return {"precision": precision, "recall": recall, "positives": positives,
                "false_alarms": int((decided[mask] & ~correct[mask]).sum())}  # fmt: skip

    everything = np.ones(len(queries), bool)
    negatives = np.array([not q.positive for q in queries])
    report = {"rule": rule} | measured(everything)
    report["families"] = {
        family: measured(np.array([q.family == family for q in queries]) | negatives)["recall"]
        for family in sorted({q.family for q in queries if q.positive})
    }
    report["enrolled_once"] = measured(np.array([q.copies == 1 for q in queries]) | negatives)
    report["enrolled_more_than_once"] = measured(np.array([q.copies > 1 for q in queries]) | negatives)
    for origin in sorted({q.origin for q in queries}):
        report[origin] = measured(np.array([q.origin == origin for q in queries]))
    answered = [q.answer for q in queries if "views" in q.answer]
    by_region = np.array([q.answer.get("region", False) for q in queries])
    report["cost"] = {
        "views_per_check": float(np.mean([a["views"] for a in answered])),
        "verified_share": float(np.mean([a["residual"] is not None for a in answered])),
    }
    report["found_by_region"] = {
        "right": int((by_region & correct).sum()), "wrong": int((by_region & ~correct).sum())
    }  # fmt: skip
    found = decided & correct
    missed = [q for q, hit in zip(queries, found, strict=True) if q.positive and not hit]
    report["missed"] = dict(Counter(where_missed(q.expected, q.answer) for q in missed))
    print(f"service decision ({rule}): precision {report['precision']:.4f}, recall {report['recall']:.4f}, "
          f"{report['false_alarms']} false alarms; recall enrolled once {report['enrolled_once']['recall']:.3f}, "
          f"more than once {report['enrolled_more_than_once']['recall']:.3f}")  # fmt: skip
    print(f"  cost: {report['cost']['views_per_check']:.2f} Triton views per Check, "
          f"{report['cost']['verified_share']:.1%} of Checks verified; found by a region: "
          f"{report['found_by_region']['right']} right, {report['found_by_region']['wrong']} wrong")  # fmt: skip
    print("  missed: " + ", ".join(f"{count} {where}" for where, count in sorted(report["missed"].items())))
    for origin in sorted({q.origin for q in queries}):
        part = report[origin]
        print(f"  {origin}: precision {part['precision']:.4f}, recall {part['recall']:.4f}, "
              f"{part['false_alarms']} false alarms")  # fmt: skip
    return report


def baselines(benchmark: Benchmark, queries: list[Query], results: dict, score) -> None:
    print("baselines:")
    keys = list(benchmark.enrol)
    for name, hash_bits in HASHES.items():
        index = HammingIndex(keys, [hash_bits(image_data(benchmark.enrol[key])) for key in keys])
        nearest = [index.nearest(hash_bits(q.data)) for q in queries]
        correct = [key in q.expected for q, (key, _) in zip(queries, nearest, strict=True)]
        results[name] = score(name, [-distance for _, distance in nearest], correct)


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that say which benchmark to build (tools/evaluation/dataset.py)."""
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES if DEFAULT_IMAGES.exists() else ROOT / "tests/images"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-share", type=float, default=0.7)
    parser.add_argument("--background-share", type=float, default=0.1)
    parser.add_argument("--twin-share", type=float, default=0.0,
                        help="share of the references enrolled a second time under another key")  # fmt: skip
    parser.add_argument("--catalogue", type=Path, help="a folder with a manifest (the clipart set) to enrol beside")
    parser.add_argument("--catalogue-groups", type=int, default=1500, help="catalogue pictures enrolled")
    parser.add_argument("--catalogue-queries", type=int, default=150,
                        help="enrolled catalogue pictures queried under every family")  # fmt: skip
    parser.add_argument("--catalogue-negatives", type=int, default=600,
                        help="unenrolled catalogue drawings queried (as they are and under two families)")  # fmt: skip
    parser.add_argument("--catalogue-once", action="store_true",
                        help="enrol only the queried file of each catalogue group (tools/twin_recall.py)")  # fmt: skip


def benchmark_of(arguments: argparse.Namespace, with_bytes: bool = True) -> Benchmark:
    return build(
        arguments.images, arguments.seed, arguments.reference_share, arguments.background_share,
        arguments.twin_share, arguments.catalogue, arguments.catalogue_groups, arguments.catalogue_queries,
        arguments.catalogue_negatives, arguments.catalogue_once, with_bytes,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(parser)
    parser.add_argument("--sample", type=int, default=0, help="check at most this many queries (0: all)")
    parser.add_argument("--service-flags", default="", help="extra flags for `neardup serve`")
    parser.add_argument("--workers", type=int, default=4, help="concurrent Check calls")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "eval-out")
    arguments = parser.parse_args()
    started = time.perf_counter()
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)

    benchmark = benchmark_of(arguments)
    queries = benchmark.queries
    if arguments.sample and arguments.sample < len(queries):
        queries = random.Random(arguments.seed).sample(queries, arguments.sample)
    positives = [q for q in queries if q.positive]
    counts = benchmark.counts | {"enrolled": len(benchmark.enrol), "positives": len(positives),
                                 "negatives": len(queries) - len(positives)}  # fmt: skip
    print(", ".join(f"{value} {name}" for name, value in counts.items()), flush=True)

    run = enrol_and_check(benchmark, queries, arguments.service_flags.split(), arguments.workers)
    rule = run["rule"]
    correct = [q.positive and bool(q.answer["keys"]) and q.answer["keys"][0] in q.expected for q in queries]
    decided_right = [q.positive and decided_key(q.answer) in q.expected for q in queries]
    families = np.array([q.family for q in queries])
    positives_by_family = {family: sum(q.family == family for q in positives) for family in sorted(set(families))}
    positives_by_family = {family: count for family, count in positives_by_family.items() if count}
    negatives_mask = np.array([not q.positive for q in queries])

    def score(name: str, scores: list[float], right: list[bool]) -> dict:
        return summarise(name, scores, right, families, positives_by_family, negatives_mask)

    per_query = [rule_scores(q) | {f"service ({rule})": q.answer["score"]} for q in queries]
    print("rules (from the service's answers):")
    results = {name: score(name, [s[name] for s in per_query], correct) for name in per_query[0]}
    default = decision_report(queries, decided_right, rule)
    geometric = geometric_bands(queries, correct, len(positives), results[f"service ({rule})"]["threshold@p0.999"])
    if not arguments.no_baselines:
        baselines(benchmark, queries, results, score)

    write_failures(out / "failures.html", benchmark.enrol, queries, [q.answer["score"] for q in queries], correct, rule)
    plot(out / "pr.png", results)
    summary = {
        "seed": arguments.seed,
        "images": str(arguments.images),
        "catalogue": str(arguments.catalogue) if arguments.catalogue else None,
        "service_flags": arguments.service_flags,
        "stats": run["stats"],
        "counts": counts,
        "timing": run["timing"],
        "default_decision": default,
        "geometric_check": geometric,
        "rejected_queries": sum("rejected" in q.answer for q in queries),
        "rules": {name: {k: v for k, v in r.items() if k != "curve"} for name, r in results.items()},
        "seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    with open(out / "queries.jsonl", "w") as written:
        for query, scores in zip(queries, per_query, strict=True):
            record = {"family": query.family, "source": query.source, "expected": sorted(query.expected),
                      "origin": query.origin, "copies": query.copies}  # fmt: skip
            written.write(json.dumps(record | query.answer | {"scores": scores}) + "\n")
    print(f"wrote {out}/results.json, pr.png, failures.html in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
