"""Rebuild the usearch index from the LMDB store (ops). Safe while the service serves and enrols.

  python tools/rebuild_index.py --data-dir DIR [--dtype i8] [--keep 2] [--nice 10]

Reads one consistent snapshot of the store (a single read transaction), adds every record's
feature to a new usearch index with a progress bar, writes it to a temporary file, fsyncs and
renames it to index-<generation>.usearch, then replaces manifest.json the same way. The
running service notices the new manifest within a second (or at once on SIGHUP or the
ReloadIndex RPC), loads it in the background and swaps it in; enrolments and deletions made
during the rebuild are replayed from the store's change log, so none drops out of search.
"""

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.index import SNAPSHOT_DTYPE, Manifest, fsync_directory, new_index  # noqa: E402
from service.store import Store, StoreError  # noqa: E402

BATCH = 10_000


def rebuild(data_dir: Path, dtype: str = SNAPSHOT_DTYPE, keep: int = 2, progress: bool = True) -> Manifest:
    store = Store(data_dir, readonly=True)
    try:
        return build_snapshot(store, Path(data_dir) / "index", dtype, keep, progress)
    finally:
        store.close()


def build_snapshot(store: Store, index_dir: Path, dtype: str, keep: int, progress: bool) -> Manifest:
    """Builds the next index generation from one read transaction of `store`."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".rebuild.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another rebuild of {index_dir} is running; wait for it to finish") from None
        generation = 1 + max([0, *(int(p.stem.split("-")[1]) for p in index_dir.glob("index-*.usearch"))])
        started = time.perf_counter()
        with store.read() as view:
            model, seq, count = view.model(), view.seq(), view.count()
            if model is None:
                raise SystemExit(f"the store in {store.path} is empty: enrol images first")
            index = new_index(dtype)
            bar = tqdm(total=count, unit="rec", desc=f"index generation {generation}", disable=not progress)
            ids, features = [], []
            for record in view.records():
                ids.append(record.id)
                features.append(record.feature)
                if len(ids) == BATCH:
                    index.add(np.array(ids, np.uint64), np.array(features, np.float32))
                    bar.update(len(ids))
                    ids, features = [], []
            if ids:
                index.add(np.array(ids, np.uint64), np.array(features, np.float32))
                bar.update(len(ids))
            bar.close()
        name = f"index-{generation}.usearch"
        temporary = index_dir / (name + ".tmp")
        index.save(str(temporary))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, index_dir / name)
        fsync_directory(index_dir)
        manifest = Manifest(generation, len(index), model, seq, dtype, name, time.time(), time.perf_counter() - started)
        manifest.write(index_dir)
        remove_old_generations(index_dir, generation, keep)
        return manifest


def remove_old_generations(index_dir: Path, current: int, keep: int) -> None:
    """Keeps the newest `keep` index files; a service still mapping an older one keeps its copy."""
    for path in index_dir.glob("index-*.usearch"):
        generation = int(path.stem.split("-")[1])
        if generation <= current - keep:
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dtype", choices=["f32", "f16", "i8"], default=SNAPSHOT_DTYPE, help="vector storage")
    parser.add_argument("--keep", type=int, default=2, help="index generations to keep on disk")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="CPU priority decrement (see nice(1)): the service keeps the CPU it needs meanwhile; 0 for full speed",
    )
    arguments = parser.parse_args()
    os.nice(arguments.nice)
    try:
        manifest = rebuild(arguments.data_dir, arguments.dtype, arguments.keep, progress=not arguments.quiet)
    except StoreError as error:
        raise SystemExit(str(error)) from None
    print(
        f"index generation {manifest.generation}: {manifest.count} records of model {manifest.model}, "
        f"store change {manifest.snapshot_seq}, {manifest.build_seconds:.1f} s -> {arguments.data_dir / 'index'}"
    )


if __name__ == "__main__":
    main()
