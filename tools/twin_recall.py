"""Does enrolling a picture twice change how often its copies are found? Paired on the same queries.

  python -m tools.twin_recall ONCE_RUN TWICE_RUN

Both are output folders of tools/evaluate.py with the same seed and catalogue: ONCE_RUN with
`--twin-share 0` (and `--catalogue-once`: one file of each catalogue picture), TWICE_RUN with a
share (and every file). The queries are the same (a query's transforms do not depend on what is
enrolled); only how many keys show their picture differs. evaluate.py's split "enrolled once /
more than once" compares different pictures; this compares each picture's copies with
themselves, enrolled once and more than once. Prints recall, in both runs, of the queries whose
picture TWICE_RUN enrolled under more keys, and of the others.
"""

import argparse
import json
from pathlib import Path

from tools.evaluation.metrics import decided_key


def found(row: dict) -> bool:
    """Declared a duplicate of a right key (as tools/evaluate.py counts recall)."""
    return row["is_duplicate"] and decided_key(row) in row["expected"]


def paired(once: list[dict], twice: list[dict]) -> dict[str, dict[str, float]]:
    """Per group of positives ("more keys": `twice` counts more right keys for it than `once`;
    "as many keys"): its size and recall in each run."""
    if [(row["source"], row["family"]) for row in once] != [(row["source"], row["family"]) for row in twice]:
        raise ValueError("the runs did not send the same queries: use the same seed, catalogue and images")
    groups: dict[str, list[tuple[bool, bool]]] = {"more keys": [], "as many keys": []}
    for first, second in zip(once, twice, strict=True):
        if second["expected"]:
            more = len(second["expected"]) > len(first["expected"])
            groups["more keys" if more else "as many keys"].append((found(first), found(second)))
    return {
        name: {
            "queries": len(rows),
            "recall_once": sum(a for a, _ in rows) / max(len(rows), 1),
            "recall_twice": sum(b for _, b in rows) / max(len(rows), 1),
        }
        for name, rows in groups.items()
    }


def rows_of(run: Path) -> list[dict]:
    with open(run / "queries.jsonl") as lines:
        return [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("once_run", type=Path, help="tools/evaluate.py's --out, --twin-share 0 --catalogue-once")
    parser.add_argument("twice_run", type=Path, help="the same seed and catalogue with a --twin-share, every file")
    arguments = parser.parse_args()
    print("| queries whose picture the second run enrols under | queries | recall, first run | recall, second run |")
    print("|---|---:|---:|---:|")
    for name, result in paired(rows_of(arguments.once_run), rows_of(arguments.twice_run)).items():
        print(f"| {name} | {result['queries']} | {result['recall_once']:.4f} | {result['recall_twice']:.4f} |")


if __name__ == "__main__":
    main()
