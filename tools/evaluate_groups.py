"""FindDuplicates on the quality benchmark's enrolled catalogue: precision and recall of the pairs
it reports, through a real service.

  python -m tools.evaluate_groups [--seed 0] [--catalogue DIR] [--twin-share 0.3] [--service-flags "..."]

Enrols what tools/evaluate.py enrols (the dev references, a share of them a second time under
`twin/`, the catalogue's pictures with every file of each), asks FindDuplicates for the groups,
and compares every pair inside a reported group with the pairs that show the same picture: the
files of one manifest group, a reference and its twin, and tools/evaluation/same_pictures.json.
Prints precision, recall, the time, and the wrong pairs with the highest scores' groups.
"""

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from service.proto.neardup.v1 import neardup_pb2 as pb
from tools.evaluation.dataset import (
    CATALOGUE_PREFIX,
    SAME_PICTURES,
    TWIN_PREFIX,
    build,
    group_links,
    grouped,
    pictures,
    read_manifest,
)
from tools.service_process import RunningService

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "dev-images"


def same_picture_pairs(enrolled: list[str], images: Path, catalogue: Path | None) -> set[frozenset[str]]:
    """Every pair of enrolled keys that show the same picture."""
    links = group_links(grouped(read_manifest(images)), "") + json.loads(SAME_PICTURES.read_text())
    if catalogue is not None:
        links += group_links(grouped(read_manifest(catalogue)), CATALOGUE_PREFIX)
    picture = pictures(links)  # a twin shows its original's picture
    members: dict[str, list[str]] = {}
    for key in enrolled:
        members.setdefault(picture(key), []).append(key)
    return {frozenset(pair) for keys in members.values() for pair in itertools.combinations(sorted(keys), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catalogue", type=Path)
    parser.add_argument("--twin-share", type=float, default=0.3)
    parser.add_argument("--catalogue-groups", type=int, default=1500)
    parser.add_argument("--service-flags", default="")
    arguments = parser.parse_args()
    benchmark = build(arguments.images, arguments.seed, 0.7, 0.1, arguments.twin_share, arguments.catalogue,
                      arguments.catalogue_groups, 0, 0)  # fmt: skip
    keys = list(benchmark.enrol)
    truth = same_picture_pairs(keys, arguments.images, arguments.catalogue)
    with tempfile.TemporaryDirectory(prefix="neardup-groups-") as work:
        service = RunningService(Path(work) / "data", *arguments.service_flags.split()).wait_serving()
        try:
            requests = (
                pb.EnrollRequest(key=key, image=source if isinstance(source, bytes) else source.read_bytes())
                for key, source in benchmark.enrol.items()
            )
            assert all(r.status == pb.EnrollResult.ENROLLED for r in service.stub.Enroll(requests, timeout=3600))
            started = time.perf_counter()
            replies = list(service.stub.FindDuplicates(pb.FindDuplicatesRequest(), timeout=3600))
            seconds = time.perf_counter() - started
        finally:
            service.stop()
    groups = [reply for reply in replies if reply.keys]
    reported = {frozenset(pair) for group in groups for pair in itertools.combinations(sorted(group.keys), 2)}
    right = reported & truth
    precision = len(right) / len(reported) if reported else 1.0
    print(f"{len(keys)} records, {len(truth)} same-picture pairs; FindDuplicates took {seconds:.0f} s "
          f"({len(keys) / seconds:.0f} records/s at --duplicates-cpu-share), {len(groups)} groups")  # fmt: skip
    print(f"pairs reported {len(reported)}: precision {precision:.4f}, recall {len(right) / len(truth):.4f}")
    twins = {pair for pair in truth if any(key.startswith(TWIN_PREFIX) for key in pair)}
    print(f"  reference and its twin: recall {len(reported & twins) / max(len(twins), 1):.4f} of {len(twins)}")
    for group in groups:
        wrong = [pair for pair in itertools.combinations(sorted(group.keys), 2) if frozenset(pair) not in truth]
        if wrong:
            print(f"  wrong in a group of {len(group.keys)}: {wrong[:3]}")


if __name__ == "__main__":
    main()
