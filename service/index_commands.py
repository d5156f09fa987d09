"""`neardup index`: rebuild the index from the store with the chosen backend (a usearch snapshot,
or a Milvus collection loaded), and make a running service reload its snapshot."""

import argparse
import os
import sys
from pathlib import Path

from service.api.channels import add_client_arguments
from service.commands import command
from service.storage.backends import BACKENDS, DEFAULT_BACKEND


def add_index_parser(commands) -> None:
    index = command(commands, "index", "operate the index (snapshots, or the Milvus collection)").add_subparsers(
        dest="index_command", required=True
    )
    rebuild = command(index, "rebuild", "build a new index snapshot from the store (safe while serving)")
    rebuild.add_argument("--data-dir", type=Path, default=Path("data"), help="the service's --data-dir")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")
    rebuild.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=DEFAULT_BACKEND,
        help="; ".join(f"{name}: {backend.rebuild_help}" for name, backend in BACKENDS.items()),
    )
    for backend in BACKENDS.values():
        backend.add_rebuild_arguments(rebuild)
    rebuild.add_argument(
        "--nice",
        type=int,
        default=10,
        help="CPU priority decrement (see nice(1)): the service keeps the CPU it needs meanwhile; 0 for full speed",
    )
    add_client_arguments(command(index, "reload", "make the running service load the newest snapshot now"))


def run_index(arguments: argparse.Namespace) -> int:
    if arguments.index_command == "reload":
        from service.api.channels import stub_from
        from service.proto.neardup.v1 import neardup_pb2 as pb

        reply = stub_from(arguments).ReloadIndex(pb.ReloadIndexRequest(), timeout=120)
        print(f"index generation {reply.index_generation} ({'reloaded' if reply.reloaded else 'already in use'})")
        return 0

    from service.storage.vector_index import RebuildError

    os.nice(arguments.nice)
    try:
        done = BACKENDS[arguments.backend].rebuild(arguments)
    except RebuildError as error:
        print(f"neardup index rebuild: {error}", file=sys.stderr)
        return 1
    print(done)
    return 0
