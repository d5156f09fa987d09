"""Client helpers for people and tools: enrol files, check images (used by the CLI and tools/)."""

import collections
import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from service.config import LimitSettings
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
CHECK_TIMEOUT_S = 60
# What the service takes in one request by default (its --max-request-bytes), less room for the
# key, the collection and the framing.
DEFAULT_MAX_FILE_BYTES = LimitSettings().max_request_bytes - 16 * 1024


class SourceError(ValueError):
    """What `neardup enroll` was given holds nothing it can enrol; the message says why, in one line."""


@dataclass
class Sources:
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)  # a folder's files that are not images we take


def image_paths(source: Path) -> Sources:
    """A folder's images (recursively, sorted), one image file, or the files a text file lists one per
    line (relative to the list's folder; blank lines and `#` comments skipped)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        found = Sources([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES])
        found.skipped = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not found.paths:
            raise SourceError(f"no images found in {source} ({len(files)} other files; {SUPPORTED} are enrolled)")
        return found
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return Sources([source])
    try:
        text = source.read_bytes().decode()
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise SourceError(f"{source}: not a {SUPPORTED} image, nor a text file listing one path a line")
    listed = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not listed:
        raise SourceError(f"{source} lists no files (one path a line; # starts a comment)")
    return Sources([source.parent / path for path in listed])  # an absolute path stays as it is


@dataclass
class EnrollSummary:
    """Each file counted once: enrolled, updated, unchanged, or failed (unreadable, too large, or
    refused by the service as invalid) with why."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    def line(self) -> str:
        parts = [f"{self.counts[name]} {name.lower()}" for name in ("ENROLLED", "UPDATED", "UNCHANGED")]
        return ", ".join([*parts, f"{len(self.failures)} failed"])


def enroll(
    stub: pb_grpc.NearDupStub,
    items: Iterable[tuple[str, Path]],
    total: int | None = None,
    progress: bool = True,
    collection: str = "",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> EnrollSummary:
    """Streams (key, file) pairs to Enroll; a file that cannot be read or is larger than the service
    takes is a failure, not the end. Keys are sent in Unicode NFC, the form the service stores (file
    names on some systems are NFD)."""
    summary = EnrollSummary()

    def requests() -> Iterator[pb.EnrollRequest]:
        for key, path in items:
            try:
                size = path.stat().st_size
                if size > max_file_bytes:
                    summary.failures.append((key, too_large(size, max_file_bytes)))
                    continue
                image = path.read_bytes()
            except OSError as error:
                summary.failures.append((key, f"cannot read {path}: {error.strerror}"))
                continue
            yield pb.EnrollRequest(key=unicodedata.normalize("NFC", key), image=image, collection=collection)

    with tqdm(total=total, unit="img", desc="enrolling", disable=not progress) as bar:
        for result in stub.Enroll(requests()):
            if result.status == pb.EnrollResult.INVALID:
                summary.failures.append((result.key, result.error))
            else:
                summary.counts[pb.EnrollResult.Status.Name(result.status)] += 1
            bar.update(1)
    return summary


def too_large(size: int, limit: int) -> str:
    return (
        f"too large: {size / 2**20:.1f} MiB, over the {limit / 2**20:.1f} MiB a request may carry "
        "(send a smaller image, or raise the service's --max-request-bytes and pass --max-file-bytes)"
    )


def check(
    stub: pb_grpc.NearDupStub,
    paths: list[Path],
    top_k: int = 1,
    as_json: bool = False,
    collections: Iterable[str] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    described: Callable[[grpc.RpcError], str] = lambda error: f"{error.code().name}: {error.details()}",
) -> Iterator[tuple[str, bool]]:
    """Checks each file; yields (a line for people, or one JSON object with the proto's field names,
    and whether it was answered)."""
    for path in paths:
        try:
            if (size := path.stat().st_size) > max_file_bytes:
                raise CheckError(too_large(size, max_file_bytes))
            request = pb.CheckRequest(image=path.read_bytes(), top_k=top_k, collections=list(collections))
            reply = stub.Check(request, timeout=CHECK_TIMEOUT_S)
        except (OSError, grpc.RpcError, CheckError) as error:
            if isinstance(error, OSError):
                why = f"cannot read {path}: {error.strerror}"
            else:
                why = described(error) if isinstance(error, grpc.RpcError) else str(error)
            yield (json.dumps({"image": str(path), "error": why}) if as_json else f"{path}: error: {why}"), False
            continue
        if as_json:
            answer = MessageToDict(reply, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
            yield json.dumps({"image": str(path), **answer}), True
            continue
        yield f"{path}: {verdict(reply)}", True


class CheckError(ValueError):
    """A file not sent to the service (too large for it); the message says why."""


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
