"""`neardup backup DEST`: a consistent, compacted copy of a data directory while the service runs.

The index manifest and the file it names are copied first (checked against the manifest's
checksum), then the store, in one LMDB read transaction. In that order the copied store holds
every change the copied index covers, so the copy restores as is; if the service moved to a
newer snapshot in between and pruned its change log past the copied one, the restored service
refuses the old index and serves from the store until `neardup index rebuild` (it says so).
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from service.storage.manifest import MANIFEST, Manifest, SnapshotError, file_sha256
from service.storage.store import Store


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Backup:
    records: int
    index_generation: int  # 0: no index copied (rebuild after restoring)
    bytes: int


def backup(data_dir: Path, dest: Path) -> Backup:
    data_dir, dest = Path(data_dir), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new folder")
    generation = copy_index(data_dir / "index", dest / "index")
    store = Store(data_dir, readonly=True)
    try:
        (dest / "store.lmdb").mkdir(parents=True)
        store.env.copy(str(dest / "store.lmdb"), compact=True)
    finally:
        store.close()
    copied = Store(dest, readonly=True)
    try:
        records = copied.count()
    finally:
        copied.close()
    size = sum(path.stat().st_size for path in dest.rglob("*") if path.is_file())
    return Backup(records, generation, size)


def copy_index(index_dir: Path, dest: Path) -> int:
    """Copies the current snapshot and its manifest; returns its generation (0 if there is none usable)."""
    path = Manifest.path(index_dir)
    if not path.exists():
        return 0
    raw = path.read_bytes()
    try:
        manifest = Manifest.parse(raw, path)
        dest.mkdir(parents=True)
        shutil.copyfile(index_dir / manifest.file, dest / manifest.file)
    except (SnapshotError, FileNotFoundError):  # damaged, or removed by a rebuild meanwhile
        shutil.rmtree(dest, ignore_errors=True)
        return 0
    if file_sha256(dest / manifest.file) != manifest.sha256:
        shutil.rmtree(dest)
        return 0
    (dest / MANIFEST).write_bytes(raw)
    return manifest.generation
