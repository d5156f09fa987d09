"""Would PDQ as a second signal find copies the default decision misses, without false alarms?

  python -m tools.pdq_signal RUN [the run's own benchmark arguments: --seed N --catalogue DIR --twin-share 0.3 ...]

Offline, on a run of tools/evaluate.py: for every query the run did not declare a duplicate (and
not near-blank), the PDQ distance between the query's bytes and those of its nearest record by
SSCD. A rule "declare that record when the two are within T bits" would gain the copies whose
nearest record is right and make a wrong answer of every other such query. Prints, for each T,
the copies gained (and their families) and the wrong answers. The service hashes nothing with
PDQ; this measures whether it should (docs/quality.md, "Where PDQ wins").
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from tools.evaluate import add_benchmark_arguments, benchmark_of, image_data
from tools.evaluation.baselines import pdq_bits
from tools.evaluation.dataset import Benchmark, Query
from tools.rescore import answered
from tools.twin_recall import rows_of

THRESHOLDS = (4, 8, 12, 16, 20, 24, 31)  # 31: PDQ's own match threshold


def undeclared_distances(benchmark: Benchmark, queries: list[Query]) -> list[int | None]:
    """Per query, PDQ bits between it and its nearest record; None where it was declared, is
    near-blank or found no record."""
    hashes: dict[str, np.ndarray] = {}
    distances = []
    for query in queries:
        answer = query.answer
        if answer["is_duplicate"] or answer.get("low_information") or not answer.get("keys"):
            distances.append(None)
            continue
        nearest = answer["keys"][0]
        if nearest not in hashes:
            hashes[nearest] = pdq_bits(image_data(benchmark.enrol[nearest]))
        distances.append(int((hashes[nearest] != pdq_bits(query.data)).sum()))
    return distances


def gained(queries: list[Query], distances: list[int | None], threshold: int) -> tuple[Counter, int]:
    """The copies (per family) and the wrong answers of "declare the nearest record within `threshold` bits"."""
    copies, wrong = Counter(), 0
    for query, distance in zip(queries, distances, strict=True):
        if distance is None or distance > threshold:
            continue
        if query.positive and query.answer["keys"][0] in query.expected:
            copies[query.family] += 1
        else:
            wrong += 1
    return copies, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an output folder of tools/evaluate.py")
    add_benchmark_arguments(parser)
    arguments = parser.parse_args()
    benchmark = benchmark_of(arguments)
    queries = answered(benchmark.queries, rows_of(arguments.run))
    distances = undeclared_distances(benchmark, queries)
    print(f"{sum(d is not None for d in distances)} queries not declared, of {len(queries)}")
    print("| PDQ bits to the nearest record, at most | copies gained | wrong | the families gaining most |")
    print("|---:|---:|---:|---|")
    for threshold in THRESHOLDS:
        copies, wrong = gained(queries, distances, threshold)
        families = ", ".join(f"`{family}` {count}" for family, count in copies.most_common(5))
        print(f"| {threshold} | +{sum(copies.values())} | {wrong} | {families} |")


if __name__ == "__main__":
    main()
