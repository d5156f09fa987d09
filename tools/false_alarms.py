"""The false alarms of a tools/evaluate.py run as one picture: each query beside the enrolled
picture it was taken for, labelled with its family and score.

  python -m tools.false_alarms --run eval-out/s2 --seed 2 --catalogue ../shared/data/clipart \\
      --twin-share 0.3 --out docs/img/false-alarms-s2.png

Takes the benchmark's arguments the run was made with (the same seed, catalogue and shares; the
sample is read from the run), rebuilds its queries, and reads each answer from RUN/queries.jsonl:
a false alarm is a query declared a duplicate of a key that does not show its picture.
"""

import argparse
import io
import json
import random
from pathlib import Path

from PIL import Image

from tools.evaluate import add_benchmark_arguments, benchmark_of, image_data
from tools.rescore import answered
from tools.stage_examples import LABEL, SIDE, pair


def false_alarms(arguments: argparse.Namespace) -> list[tuple[bytes, Image.Image, str]]:
    """(the query's bytes, the picture it was taken for, a label) for each false alarm of the run."""
    rows = [json.loads(line) for line in (arguments.run / "queries.jsonl").read_text().splitlines()]
    benchmark = benchmark_of(arguments)
    queries = benchmark.queries
    if len(rows) < len(queries):  # the run's --sample, drawn as tools/evaluate.py draws it
        queries = random.Random(arguments.seed).sample(queries, len(rows))
    found = []
    for query in answered(queries, rows):
        answer = query.answer
        if answer["is_duplicate"] and answer["declared"] not in answer["expected"]:
            taken_for = Image.open(io.BytesIO(image_data(benchmark.enrol[answer["declared"]])))
            label = f"{answer['family']} of {Path(answer['source']).name[:28]}: {answer['score']:.3f}"
            found.append((query.data, taken_for.convert("RGB"), label))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(parser)
    parser.add_argument("--run", type=Path, required=True, help="tools/evaluate.py's --out")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    arguments = parser.parse_args()
    strips = [pair(query, taken_for, label) for query, taken_for, label in false_alarms(arguments)]
    sheet = Image.new("RGB", (2 * SIDE + 8, max(1, len(strips)) * (SIDE + LABEL + 8)), "white")
    for row, strip in enumerate(strips):
        sheet.paste(strip, (0, row * (SIDE + LABEL + 8)))
    sheet.save(arguments.out)
    print(f"{len(strips)} false alarms of {arguments.run} in {arguments.out}")


if __name__ == "__main__":
    main()
