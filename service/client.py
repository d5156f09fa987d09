"""Client helpers for people and tools: enrol files, check images (used by the CLI and tools/)."""

import collections
import json
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CHECK_TIMEOUT_S = 60


def image_paths(source: Path) -> list[Path]:
    """A folder's images (recursively, sorted), one image file, or the paths listed one per line in a
    text file."""
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    lines = source.read_text().splitlines()
    return [Path(line.strip()) for line in lines if line.strip()]


@dataclass
class EnrollSummary:
    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    def line(self) -> str:
        parts = [f"{self.counts[name]} {name.lower()}" for name in ("ENROLLED", "UPDATED", "UNCHANGED", "INVALID")]
        return ", ".join(parts) + (f", {len(self.failures)} failed" if self.failures else "")


def enroll(
    stub: pb_grpc.NearDupStub, items: Iterable[tuple[str, Path]], total: int | None = None, progress: bool = True
) -> EnrollSummary:
    """Streams (key, file) pairs to Enroll; an unreadable file is a failure, not the end. Keys are
    sent in Unicode NFC, the form the service stores (file names on some systems are NFD)."""
    summary = EnrollSummary()

    def requests() -> Iterator[pb.EnrollRequest]:
        for key, path in items:
            try:
                image = path.read_bytes()
            except OSError as error:
                summary.failures.append((key, f"cannot read {path}: {error.strerror}"))
                continue
            yield pb.EnrollRequest(key=unicodedata.normalize("NFC", key), image=image)

    with tqdm(total=total, unit="img", desc="enrolling", disable=not progress) as bar:
        for result in stub.Enroll(requests()):
            status = pb.EnrollResult.Status.Name(result.status)
            summary.counts[status] += 1
            if result.status == pb.EnrollResult.INVALID:
                summary.failures.append((result.key, result.error))
            bar.update(1)
    return summary


def check(
    stub: pb_grpc.NearDupStub, paths: list[Path], top_k: int = 1, as_json: bool = False
) -> Iterator[tuple[str, bool]]:
    """Checks each file; yields (a line for people, or one JSON object, and whether it was answered)."""
    for path in paths:
        try:
            reply = stub.Check(pb.CheckRequest(image=path.read_bytes(), top_k=top_k), timeout=CHECK_TIMEOUT_S)
        except (OSError, grpc.RpcError) as error:
            why = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else str(error)
            yield (json.dumps({"image": str(path), "error": why}) if as_json else f"{path}: error: {why}"), False
            continue
        if as_json:
            answer = MessageToDict(reply, always_print_fields_with_no_presence=True)
            yield json.dumps({"image": str(path), **answer}), True
            continue
        yield f"{path}: {verdict(reply)}", True


def verdict(reply: pb.CheckResponse) -> str:
    """The decision in words, with the score and the rule that made it."""
    if not reply.matches:
        return "new (nothing enrolled)"
    nearest = reply.matches[0]
    if reply.identical:
        return f"IDENTICAL to {nearest.key} (the same bytes)"
    similarity = 1 - nearest.distance**2 / 2  # cosine, from the Euclidean distance of unit vectors
    why = f"score {reply.score:.3f} by the {reply.decision_rule} rule; similarity {similarity:.3f}"
    if reply.low_information:
        why += "; near-blank, never a duplicate"
    return f"DUPLICATE of {nearest.key} ({why})" if reply.is_duplicate else f"new; nearest {nearest.key} ({why})"
