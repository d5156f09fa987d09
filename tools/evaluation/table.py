"""Markdown tables from tools/evaluate.py results, for docs/quality.md.

python -m tools.evaluation.table RESULTS.json [RESULTS.json ...]
"""

import json
import sys
from pathlib import Path


def rules_table(results: dict) -> str:
    lines = [
        "| rule | µAP | recall @ P ≥ 99 % | recall @ P ≥ 99.9 % | threshold @ 99.9 % |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rule in results["rules"].items():
        lines.append(
            f"| {name} | {rule['uap']:.3f} | {rule['recall@p0.99']:.3f} | {rule['recall@p0.999']:.3f} "
            f"| {rule['threshold@p0.999']:.3f} |"
        )
    return "\n".join(lines)


def families_table(results: dict, names: list[str]) -> str:
    lines = ["| family | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for family in results["rules"][names[0]]["families"]:
        values = [results["rules"][name]["families"][family] for name in names]
        best = max(values)
        cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in values]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        results = json.loads(Path(path).read_text())
        print(f"## {path}: flags `{results['service_flags']}`, seed {results['seed']}\n")
        print(rules_table(results), "\n")
        names = [n for n in ("margin(beta=0.5)", "global", "seed", "pdq", "phash") if n in results["rules"]]
        print(families_table(results, names), "\n")
        default = results["default_decision"]
        decision = f"precision {default['precision']:.4f}, recall {default['recall']:.4f}"
        print(f"service decision ({default['rule']}): {decision}")
        print(f"timing: {results['timing']}\n")


if __name__ == "__main__":
    main()
