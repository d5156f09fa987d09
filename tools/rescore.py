"""A run of tools/evaluate.py scored again against the labels as they are now, without the service.

  python -m tools.rescore RUN [the run's own benchmark arguments: --seed N --catalogue DIR --twin-share 0.3 ...]

When the labels change (tools/evaluation/same_pictures.json, shown_inside.json: which enrolled
keys are right for a query), a measured run need not be repeated to see what the change does: the
service's answers in RUN/queries.jsonl stay, the right answers are built again (the queries are
identified, not made), and the default decision is reported as tools/evaluate.py reports it.
Prints the queries whose right answers changed and writes RUN/rescored.json.
"""

import argparse
import json
from pathlib import Path

from tools.evaluate import add_benchmark_arguments, benchmark_of, decision_report
from tools.evaluation.dataset import Query
from tools.evaluation.metrics import decided_key


def answered(queries: list[Query], rows: list[dict]) -> list[Query]:
    """The queries, each with its answer from the run's rows (the same queries in the same order)."""
    if [(q.family, q.source) for q in queries] != [(row["family"], row["source"]) for row in rows]:
        raise ValueError("the run did not send these queries: give its own benchmark arguments (and no --sample)")
    for query, row in zip(queries, rows, strict=True):
        query.answer = row
    return queries


def rescored(run: Path, arguments: argparse.Namespace) -> tuple[dict, list[Query]]:
    """The run's default decision on the current labels, and the queries whose right answers changed."""
    with open(run / "queries.jsonl") as lines:
        rows = [json.loads(line) for line in lines]
    queries = answered(benchmark_of(arguments, with_bytes=False).queries, rows)
    changed = [query for query in queries if sorted(query.expected) != query.answer["expected"]]
    right = [query.positive and decided_key(query.answer) in query.expected for query in queries]
    rule = json.loads((run / "results.json").read_text())["default_decision"]["rule"]
    return decision_report(queries, right, rule), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an output folder of tools/evaluate.py")
    add_benchmark_arguments(parser)
    arguments = parser.parse_args()
    report, changed = rescored(arguments.run, arguments)
    for query in changed:
        found = "found" if query.answer["is_duplicate"] and decided_key(query.answer) in query.expected else "not found"
        print(f"  right answers changed: {query.family} {query.source} -> {sorted(query.expected)} ({found})")
    print(f"{len(changed)} queries' right answers changed")
    (arguments.run / "rescored.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
