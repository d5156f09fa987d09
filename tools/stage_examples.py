"""A picture per stage of the decision for docs/decision.md: each query of tests/test_pipeline.py
beside the enrolled picture it was answered with, labelled with the stage that decided it.

  python -m tools.stage_examples --out docs/img

Starts the service on a fresh data directory with the pictures tests/test_detection.py enrols,
checks each query, and writes OUT/stage-<stage>-<n>.png (the query on the left, the nearest match's
enrolled picture on the right, both fitted into SIDE px) and prints one line per query.
"""

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import image_bytes
from tests.test_detection import OTHERS, PICTURE, enrolled_service
from tests.test_pipeline import LION, queries

SIDE = 160  # each picture fitted into SIDE x SIDE
LABEL = 18  # px of text under the pair


def enrolled_picture(key: str) -> Image.Image | None:
    """The picture enrolled under `key` by tests/test_detection.py (None: the blank)."""
    name = key.split("/", 1)[0] if key.startswith("falcon/") else key
    name = PICTURE if name == "falcon" else name
    if name not in [PICTURE, *OTHERS]:
        return None
    return Image.open(io.BytesIO(image_bytes(name))).convert("RGB")


def pair(query: bytes, match: Image.Image | None, label: str) -> Image.Image:
    """The query and what it was answered with, side by side, with a label under them."""
    strip = Image.new("RGB", (2 * SIDE + 8, SIDE + LABEL), "white")
    shown = Image.open(io.BytesIO(query)).convert("RGB")
    small = shown.width < SIDE // 4  # a thumbnail shown at its size, in a frame
    strip.paste(shown if small else ImageOps.contain(shown, (SIDE, SIDE)), (0, 0))
    if small:
        ImageDraw.Draw(strip).rectangle((0, 0, shown.width + 1, shown.height + 1), outline="grey")
    if match is not None:
        strip.paste(ImageOps.contain(match, (SIDE, SIDE)), (SIDE + 8, 0))
    ImageDraw.Draw(strip).text((2, SIDE + 3), label, fill="black")
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where the pictures go")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    examples = queries()
    with tempfile.TemporaryDirectory() as folder:
        service = enrolled_service(Path(folder) / "data")
        try:
            dismissed = examples["a copy dismissed"][0]
            service.stub.Dismiss(pb.DismissRequest(key=LION, image=dismissed), timeout=60)
            seen: dict[str, int] = {}
            for name, (image, _) in examples.items():
                reply = service.stub.Check(pb.CheckRequest(image=image, top_k=1), timeout=60)
                key = reply.matches[0].key if reply.matches else ""
                answer = "duplicate" if reply.is_duplicate else "not a duplicate"
                seen[reply.decided_by] = seen.get(reply.decided_by, 0) + 1
                path = arguments.out / f"stage-{reply.decided_by}-{seen[reply.decided_by]}.png"
                pair(image, enrolled_picture(key), f"{reply.decided_by}: {answer}").save(path)
                print(f"{path}: {name} -> {answer} of {key!r} (decided by {reply.decided_by})")
        finally:
            service.stop()


if __name__ == "__main__":
    main()
