"""What verification costs per pair, what a record stores for it, and what the region stage's box
search costs beside it.

  python -m benchmarks.verification [--images DIR] [--pairs 150]

For dev images, each checked against its own reference under a few transforms (re-encoded,
resized, cropped, mirrored) and against another image's: the time of one residual
(media/verification.py, single-threaded), and the reference's size; and the boxes pasted on each
original looked for (media/insets.py) at the side the region stage decodes (twice the canvas).
Both kinds of pair are also timed without the crop stage (tried only where no other alignment
agrees closely: for an unrelated picture, every time), and as the service pays a pair now: the
query prepared once per Check (verification.QueryPicture) and the record's side kept by the Judge
(verification.Candidate), so that one more candidate costs only the alignments; side by side.
"""

import argparse
import io
import random
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.bench import DEFAULT_IMAGES
from service.media import insets, verification
from service.media.preprocess import REGION_DECODE_SCALE
from service.triton.contract import canvas_size

TRANSFORMS = {
    "re-encoded": lambda image: _jpeg(image, 30),
    "resized": lambda image: image.resize((max(1, image.width // 2), max(1, image.height // 2))),
    "cropped": lambda image: image.crop((image.width // 8, image.height // 8, image.width, image.height)),
    "mirrored": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def _timed(query: Image.Image, reference: bytes, crops: bool) -> tuple[float, verification.Residual | None]:
    """Seconds for one residual, and the residual, with the crop stage or without."""
    started = time.perf_counter()
    found = verification.residual(query, reference, as_crops=crops)
    return time.perf_counter() - started, found


def _timed_kept(query: Image.Image, reference: bytes) -> float:
    """Seconds for one more pair once the query is prepared and the candidate kept (a second compare)."""
    prepared = verification.QueryPicture(query)
    kept = verification.candidate(reference, prepared.has_no_colour)
    verification.compared(prepared, kept)  # prepares the query's side
    started = time.perf_counter()
    verification.compared(prepared, kept)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--pairs", type=int, default=150)
    arguments = parser.parse_args()
    cv2.setNumThreads(1)
    files = sorted(arguments.images.glob("*.jpg"))
    rng = random.Random(0)
    times, sizes, copies, others, box_times = [], [], [], [], []  # times: (unrelated, with crops, without)
    for _ in range(arguments.pairs):
        original, other = (Image.open(path).convert("RGB") for path in rng.sample(files, 2))
        original.thumbnail((1024, 1024))
        decoded = original.copy()
        decoded.thumbnail((canvas_size(224) * REGION_DECODE_SCALE,) * 2)  # the default input side
        started = time.perf_counter()
        insets.boxes(decoded)
        box_times.append(time.perf_counter() - started)
        reference = verification.reference(original)
        sizes.append(len(reference))
        query = TRANSFORMS[rng.choice(list(TRANSFORMS))](original)
        query.thumbnail((verification.QUERY_SIDE, verification.QUERY_SIDE))
        other.thumbnail((verification.QUERY_SIDE, verification.QUERY_SIDE))
        for pairs, picture in ((copies, query), (others, other)):
            (seconds, found), (without, _) = (_timed(picture, reference, crops) for crops in (True, False))
            pairs.append(found)
            times.append((picture is other, seconds, without, _timed_kept(picture, reference)))
    for unrelated in (False, True):
        with_crops, without, kept = (1000 * np.array([t[at] for t in times if t[0] == unrelated]) for at in (1, 2, 3))
        print(
            f"residual of one {'unrelated' if unrelated else 'copy'} pair: median {np.median(with_crops):.1f} ms, "
            f"p90 {np.percentile(with_crops, 90):.1f} ms (one thread); without the crop stage {np.median(without):.1f}"
            f" ms ({np.median(with_crops) / np.median(without):.2f}x); query prepared and candidate kept "
            f"{np.median(kept):.1f} ms ({np.median(with_crops) / np.median(kept):.2f}x less)"
        )
    ms = 1000 * np.array([t[1] for t in times if not t[0]])
    box_ms = 1000 * np.array(box_times)
    print(
        f"boxes looked for in one picture: median {np.median(box_ms):.1f} ms, p90 {np.percentile(box_ms, 90):.1f} ms"
        f" ({np.median(box_ms) / np.median(ms):.2f}x a residual)"
    )
    print(f"reference per record: median {np.median(sizes) / 1024:.1f} KiB, max {max(sizes) / 1024:.1f} KiB")
    known = [value.lightness for value in copies if value is not None]
    unrelated = [value.lightness for value in others if value is not None]
    print(f"copies: median residual {np.median(known):.2f}; unrelated images: median {np.median(unrelated):.2f}")


if __name__ == "__main__":
    main()
