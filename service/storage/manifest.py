"""An index snapshot's manifest (DATA_DIR/index/manifest.json): which file is current, what it
covers, and its checksum; written atomically, and checked field by field when read."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MANIFEST = "manifest.json"
FIX = "rebuild it with `neardup index rebuild --data-dir DIR` (or tools/rebuild_index.py)"


FIELD_TYPES = {int: int, float: (int, float), str: str}  # what JSON may hold for each annotation


class SnapshotError(RuntimeError):
    """The snapshot on disk cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    generation: int
    count: int
    model: str
    snapshot_seq: int  # the store's change sequence number the snapshot includes
    dtype: str
    file: str
    created_at: float
    sha256: str  # of the index file, checked before usearch reads a byte of it
    build_seconds: float = 0.0

    @staticmethod
    def path(index_dir: Path) -> Path:
        return index_dir / MANIFEST

    @classmethod
    def parse(cls, raw: bytes, path: Path) -> "Manifest":
        """The manifest, checked field by field: a wrong type or a file outside index/ is refused."""
        try:
            values = json.loads(raw)
            if not isinstance(values, dict):
                raise TypeError("not a JSON object")
            manifest = cls(**values)
            for member in fields(cls):
                value, kind = getattr(manifest, member.name), FIELD_TYPES[member.type]
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise TypeError(f"{member.name} is {value!r}, not {member.type.__name__}")
            if manifest.file != f"index-{manifest.generation}.usearch":
                raise ValueError(f"file {manifest.file!r} is not index-{manifest.generation}.usearch")
        except (ValueError, TypeError) as error:
            raise SnapshotError(f"{path} is corrupt ({error}); {FIX}") from None
        return manifest

    def write(self, index_dir: Path) -> None:
        write_atomically(self.path(index_dir), json.dumps(asdict(self), indent=1).encode())


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
