"""Does enrolling a picture twice change how often its copies are found? Paired on the same queries.

  python tools/twin_recall.py ONCE_RUN TWICE_RUN

Both are output folders of tools/evaluate.py with the same seed and catalogue, ONCE_RUN with
`--twin-share 0` and TWICE_RUN with a share: the queries are the same (a query's transform does
not depend on the twins), only the enrolled twins differ. evaluate.py's split "enrolled once /
more than once" compares different pictures; this compares each twinned picture's copies with
themselves, its twin enrolled and not. Prints recall of the queries whose reference TWICE_RUN
enrolled under `twin/` too, and of the others, in both runs.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.evaluation.dataset import TWIN_PREFIX  # noqa: E402


def found(row: dict) -> bool:
    return row["is_duplicate"] and row["declared"] in row["expected"]


def paired(once: list[dict], twice: list[dict]) -> dict[str, dict[str, float]]:
    """Per group of positives ("twinned": a key of its reference is a twin in `twice`; "not
    twinned"): its size and recall in each run."""
    if [(row["source"], row["family"]) for row in once] != [(row["source"], row["family"]) for row in twice]:
        raise ValueError("the runs did not send the same queries: use the same seed, catalogue and images")
    groups: dict[str, list[tuple[bool, bool]]] = {"twinned": [], "not twinned": []}
    for first, second in zip(once, twice, strict=True):
        if second["expected"]:
            twinned = any(key.startswith(TWIN_PREFIX) for key in second["expected"])
            groups["twinned" if twinned else "not twinned"].append((found(first), found(second)))
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
    parser.add_argument("once_run", type=Path, help="tools/evaluate.py's --out with --twin-share 0")
    parser.add_argument("twice_run", type=Path, help="the same seed and catalogue with a --twin-share")
    arguments = parser.parse_args()
    print("| queries of references | queries | recall, enrolled once | recall, enrolled twice |")
    print("|---|---:|---:|---:|")
    for name, result in paired(rows_of(arguments.once_run), rows_of(arguments.twice_run)).items():
        print(f"| {name} | {result['queries']} | {result['recall_once']:.4f} | {result['recall_twice']:.4f} |")


if __name__ == "__main__":
    main()
