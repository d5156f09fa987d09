"""Do two runs of the benchmark answer each query the same? Query by query, to the last digit.

  python -m tools.compare_runs RUN_A RUN_B

Both are output folders of tools/evaluate.py with the same seed, catalogue and sample (a change of
code measured against the code before it). Prints how many queries got the same whole answer,
how many differ in the decision, in the keys declared or listed, or only in a number (score,
residual, distances: the largest difference of each), and every query whose decision differs.
"""

import argparse
from pathlib import Path

from tools.twin_recall import rows_of

DECISION = ("is_duplicate", "declared", "low_information", "region")
NUMBERS = ("score", "residual", "region_score", "background")


def compared(first: list[dict], second: list[dict]) -> dict:
    """Same (whole answer), decision (differs), keys (same decision, other keys), numbers (only a
    number differs) counts; the largest difference per number; the queries whose decision differs."""
    if [(row["source"], row["family"]) for row in first] != [(row["source"], row["family"]) for row in second]:
        raise ValueError("the runs did not send the same queries: use the same seed, catalogue and sample")
    counts = {"same": 0, "decision": 0, "keys": 0, "numbers": 0}
    largest = dict.fromkeys(NUMBERS + ("distances",), 0.0)
    decisions = []
    for a, b in zip(first, second, strict=True):
        if a == b:
            counts["same"] += 1
            continue
        for name in NUMBERS:
            if a.get(name) is not None and b.get(name) is not None:
                largest[name] = max(largest[name], abs(a[name] - b[name]))
        if len(a["distances"]) == len(b["distances"]):
            gaps = [abs(x - y) for x, y in zip(a["distances"], b["distances"], strict=True)]
            largest["distances"] = max([largest["distances"], *gaps])
        if any(a.get(name) != b.get(name) for name in DECISION):
            counts["decision"] += 1
            decisions.append((a, b))
        elif a["keys"] != b["keys"]:
            counts["keys"] += 1
        else:
            counts["numbers"] += 1
    return {"counts": counts, "largest": largest, "decisions": decisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="tools/evaluate.py's --out")
    parser.add_argument("second", type=Path, help="another run's, with the same seed, catalogue and sample")
    arguments = parser.parse_args()
    result = compared(rows_of(arguments.first), rows_of(arguments.second))
    counts = result["counts"]
    print(
        f"{sum(counts.values())} queries: {counts['same']} answered the same to the last digit, "
        f"{counts['decision']} with another decision, {counts['keys']} with other keys, "
        f"{counts['numbers']} differing only in a number"
    )
    print("largest differences: " + ", ".join(f"{name} {value:.2g}" for name, value in result["largest"].items()))
    for a, b in result["decisions"]:
        print(
            f"  {a['family']} of {a['source']}: {a['is_duplicate']} ({a['declared']}, {a['score']:.4f}) -> "
            f"{b['is_duplicate']} ({b['declared']}, {b['score']:.4f})"
        )


if __name__ == "__main__":
    main()
