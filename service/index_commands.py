"""`neardup index`: build the usearch snapshot or load a Milvus collection from the store, and
make a running service reload its snapshot."""

import argparse
import os
import sys
import time
from pathlib import Path

from service.api.channels import add_client_arguments
from service.storage.usearch_index import SNAPSHOT_DTYPE


def add_index_parser(commands) -> None:
    index = commands.add_parser("index", help="operate the index (snapshots, or the Milvus collection)").add_subparsers(
        dest="index_command", required=True
    )
    rebuild = index.add_parser("rebuild", help="build a new index snapshot from the store (safe while serving)")
    rebuild.add_argument("--data-dir", type=Path, default=Path("data"), help="the service's --data-dir")
    rebuild.add_argument("--dtype", choices=["f32", "f16", "i8"], default=SNAPSHOT_DTYPE, help="vector storage")
    rebuild.add_argument("--keep", type=at_least_one, default=2, help="index generations to keep on disk (>= 1)")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")
    rebuild.add_argument(
        "--backend",
        choices=["usearch", "milvus"],
        default="usearch",
        help="usearch: a new snapshot in DATA_DIR/index; milvus: load every record into the Milvus collection",
    )
    rebuild.add_argument("--milvus-uri", default=os.environ.get("NEARDUP_MILVUS_URI", ""))
    rebuild.add_argument("--milvus-collection", default=os.environ.get("NEARDUP_MILVUS_COLLECTION", "neardup"))
    rebuild.add_argument("--milvus-token-file", default=os.environ.get("NEARDUP_MILVUS_TOKEN_FILE", ""))
    rebuild.add_argument(
        "--nice",
        type=int,
        default=10,
        help="CPU priority decrement (see nice(1)): the service keeps the CPU it needs meanwhile; 0 for full speed",
    )
    add_client_arguments(index.add_parser("reload", help="make the running service load the newest snapshot now"))


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the generation just built), got {value}")
    return value


def run_index(arguments: argparse.Namespace) -> int:
    if arguments.index_command == "reload":
        from service.api.channels import stub_from
        from service.proto.neardup.v1 import neardup_pb2 as pb

        reply = stub_from(arguments).ReloadIndex(pb.ReloadIndexRequest(), timeout=120)
        print(f"index generation {reply.index_generation} ({'reloaded' if reply.reloaded else 'already in use'})")
        return 0

    from service.storage.snapshots import RebuildError, rebuild
    from service.storage.store import StoreError

    os.nice(arguments.nice)
    if arguments.backend == "milvus":
        return load_milvus(arguments)
    try:
        manifest = rebuild(arguments.data_dir, arguments.dtype, arguments.keep, progress=not arguments.quiet)
    except (RebuildError, StoreError) as error:
        print(f"neardup index rebuild: {error}", file=sys.stderr)
        return 1
    print(
        f"index generation {manifest.generation}: {manifest.count} records of model {manifest.model}, "
        f"store change {manifest.snapshot_seq}, {manifest.build_seconds:.1f} s -> {arguments.data_dir / 'index'}"
    )
    return 0


def load_milvus(arguments: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.storage.milvus_index import MilvusUnavailable, open_milvus
    from service.storage.store import Store, StoreError

    try:
        store = Store(arguments.data_dir, readonly=not (arguments.data_dir / "store.lmdb").exists())
    except StoreError as error:
        print(f"neardup index rebuild: {error}", file=sys.stderr)
        return 1
    try:
        started = time.perf_counter()
        milvus = (arguments.milvus_uri, arguments.milvus_collection, arguments.milvus_token_file)
        index = open_milvus(store, *milvus, store.model() or "")
        with tqdm(total=store.count(), unit="record", disable=arguments.quiet) as bar:
            loaded = index.push_everything(lambda done: bar.update(done - bar.n))
    except (MilvusUnavailable, OSError) as error:
        print(f"neardup index rebuild: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"Milvus collection {arguments.milvus_collection}: {loaded} records loaded from {arguments.data_dir} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
