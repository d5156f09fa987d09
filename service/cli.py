"""The `neardup` command: run the service, talk to a running one, and operate its index.

neardup serve [settings]                  run the gRPC service (--help lists every setting)
neardup enroll DIR_OR_LIST                enrol a folder of images, or the files a text file lists
neardup check IMAGE...                    is each image a near-duplicate of an enrolled one?
neardup duplicates [--collection C]       the groups of enrolled keys that duplicate each other
neardup stats                             the service's Stats, as JSON
neardup health                            exit 0 if the service reports SERVING (container probes)
neardup index rebuild --data-dir DIR      build a new index snapshot from the store
  [--backend milvus --milvus-uri URI]     ... or load it into a Milvus collection
neardup index reload                      make the service load the newest snapshot now
neardup backup DEST --data-dir DIR        a consistent, compacted copy of the data (safe while serving)
neardup token new NAME --roles ROLES [--collection C ...]
                                           a fresh auth token and its entry for the token file

Commands that call the service take --server, --token, --tls-ca, --client-cert, --client-key.
"""

import argparse
import asyncio
import faulthandler
import json
import logging
import sys
from pathlib import Path

from service.api.channels import add_client_arguments
from service.client import DEFAULT_MAX_FILE_BYTES
from service.commands import command
from service.flags import add_arguments, settings_from_arguments
from service.index_commands import add_index_parser, run_index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neardup", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("serve", help="run the gRPC service"))

    enroll = command(commands, "enroll", "enrol a folder of images, or the files listed in a text file")
    enroll.add_argument(
        "source",
        type=Path,
        help="an image, a folder (searched recursively; each file's path is its key), or a text file with "
        "one path a line (relative to its folder; # starts a comment)",
    )
    enroll.add_argument("--collection", default="", help="enrol into this collection ('': the default one)")
    enroll.add_argument(
        "--max-file-bytes",
        type=int,
        default=DEFAULT_MAX_FILE_BYTES,
        help="larger files are reported as too large and skipped (the service's default request limit)",
    )
    add_client_arguments(enroll)

    check = command(commands, "check", "is each image a near-duplicate of an enrolled one?")
    check.add_argument("images", type=Path, nargs="+", help="image files to check, each on its own")
    check.add_argument("--top-k", type=int, default=1, help="nearest enrolled images to list per image (at most 100)")
    check.add_argument(
        "--collection",
        action="append",
        default=[],
        help="search only this collection; repeat for several ('' is the default one; none given: every one)",
    )
    check.add_argument("--json", action="store_true", help="one JSON object per image, the proto's field names")
    check.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, help="larger files are not sent")
    add_client_arguments(check)

    duplicates = command(commands, "duplicates", "the groups of enrolled keys that duplicate each other")
    duplicates.add_argument("--collection", default="", help="only this named collection (default: all, joined across)")
    duplicates.add_argument("--json", action="store_true", help="one JSON object per group, with each pair's score")
    add_client_arguments(duplicates)

    add_client_arguments(command(commands, "stats", "the service's Stats, as JSON"))
    health = command(commands, "health", "exit 0 if the service reports SERVING")
    health.add_argument(
        "--service",
        default="neardup.v1.NearDup",
        help="readiness (default), '' for liveness, or a component: triton, store, index",
    )
    add_client_arguments(health)

    add_index_parser(commands)

    backup = command(commands, "backup", "a consistent, compacted copy of the data directory (safe while serving)")
    backup.add_argument("dest", type=Path, help="a new folder; restore by serving with --data-dir DEST")
    backup.add_argument("--data-dir", type=Path, default=Path("data"), help="the service's --data-dir")

    token = command(commands, "token", "auth tokens").add_subparsers(dest="token_command", required=True)
    new = command(token, "new", "print a fresh token and its entry for the --auth-tokens file")
    new.add_argument("name", help="who will use it (logged as the caller)")
    new.add_argument("--roles", required=True, help="comma-separated: check, enroll, admin")
    new.add_argument(
        "--collection",
        action="append",
        dest="collections",
        help="limit the token to this collection (repeat for more; '' is the default one); "
        "without it the token reaches every collection",
    )
    return parser


def run_serve(arguments: argparse.Namespace) -> int:
    from service import logs
    from service.app import StartupError, serve

    settings = settings_from_arguments(arguments)
    logs.configure(settings.server.log_format)
    faulthandler.enable()  # a crash in native code (usearch, LMDB, Pillow) leaves its stack in the log
    if settings.server.workers > 1:
        from service import workers

        return asyncio.run(workers.supervise(settings))
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        logging.getLogger("service.app").critical("cannot start: %s", error)
        return 1
    return 0


def run_enroll(arguments: argparse.Namespace) -> int:
    from service.api.channels import stub_from
    from service.client import enroll, image_paths

    found = image_paths(arguments.source)
    if found.skipped:
        shown = ", ".join(str(path) for path in found.skipped[:3]) + (", ..." if len(found.skipped) > 3 else "")
        files = f"{len(found.skipped)} file{'s' if len(found.skipped) > 1 else ''}"
        print(f"not images, skipped: {files} ({shown})", file=sys.stderr)
    items = ((str(path), path) for path in found.paths)
    summary = enroll(
        stub_from(arguments), items, len(found.paths), True, arguments.collection, arguments.max_file_bytes
    )
    for key, why in summary.failures:
        print(f"failed: {key}: {why}", file=sys.stderr)
    print(summary.line() + (f", {len(found.skipped)} skipped" if found.skipped else ""))
    return 1 if summary.failures else 0


def run_check(arguments: argparse.Namespace) -> int:
    from service.api.channels import stub_from
    from service.client import check

    failed = False
    answers = check(
        stub_from(arguments),
        arguments.images,
        arguments.top_k,
        arguments.json,
        arguments.collection,
        arguments.max_file_bytes,
        lambda error: described(error, arguments),
    )
    for line, answered in answers:
        print(line, file=sys.stdout if answered or arguments.json else sys.stderr)
        failed |= not answered
    return 1 if failed else 0


def run_duplicates(arguments: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.api.channels import stub_from
    from service.proto.neardup.v1 import neardup_pb2 as pb

    replies = stub_from(arguments).FindDuplicates(pb.FindDuplicatesRequest(collection=arguments.collection))
    with tqdm(unit="record", desc="records checked", file=sys.stderr) as bar:
        for reply in replies:
            bar.total = reply.records_total
            bar.update(reply.records_checked - bar.n)
            if not reply.keys:
                continue
            names = [f"{c}/{k}" if c else k for k, c in zip(reply.keys, reply.collections, strict=True)]
            if arguments.json:
                members = [{"key": k, "collection": c} for k, c in zip(reply.keys, reply.collections, strict=True)]
                pairs = [
                    {"first": names[pair.first], "second": names[pair.second], "score": round(pair.score, 4)}
                    for pair in reply.pairs
                ]
                line = json.dumps({"members": members, "pairs": pairs})
            else:
                line = "  ".join(names)
            bar.write(line, file=sys.stdout)
    return 0


def run_stats(arguments: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from service.api.channels import stub_from
    from service.proto.neardup.v1 import neardup_pb2 as pb

    reply = stub_from(arguments).Stats(pb.StatsRequest(), timeout=10)
    answer = MessageToDict(reply, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    print(json.dumps(answer, indent=1))
    return 0


def run_health(arguments: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.api.channels import channel_from

    with channel_from(arguments) as opened:
        try:
            request = health_pb2.HealthCheckRequest(service=arguments.service)
            reply = health_pb2_grpc.HealthStub(opened).Check(request, timeout=2)
        except grpc.RpcError as error:
            print(f"{arguments.server}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(f"{arguments.server}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def run_backup(arguments: argparse.Namespace) -> int:
    from service.storage.backup import BackupError, backup
    from service.storage.store import StoreError

    try:
        copied = backup(arguments.data_dir, arguments.dest)
    except (BackupError, StoreError) as error:
        print(f"neardup backup: {error}", file=sys.stderr)
        return 1
    index = (
        f"index generation {copied.index_generation}"
        if copied.index_generation
        else "no index (rebuild after restoring)"
    )
    print(f"{arguments.dest}: {copied.records} records, {index}, {copied.bytes / 1e6:.1f} MB")
    return 0


def run_token(arguments: argparse.Namespace) -> int:
    from service.api.auth import TokenFileError, new_token

    try:
        roles = [role.strip() for role in arguments.roles.split(",") if role.strip()]
        token, entry = new_token(arguments.name, roles, arguments.collections)
    except TokenFileError as error:
        print(f"neardup token new: {error}", file=sys.stderr)
        return 2
    print(f"token (give it to {arguments.name}; it is not stored anywhere): {token}")
    print('entry for the token file\'s "tokens" list (then SIGHUP the service):')
    print(json.dumps(entry))
    return 0


COMMANDS = {
    "serve": run_serve,
    "enroll": run_enroll,
    "check": run_check,
    "duplicates": run_duplicates,
    "stats": run_stats,
    "health": run_health,
    "index": run_index,
    "backup": run_backup,
    "token": run_token,
}


def main(argv: list[str] | None = None) -> None:
    """Runs a command; a service that cannot be reached or a path that cannot be read is one line."""
    import grpc
    import lmdb

    from service.client import SourceError
    from service.storage.store import STORE_DAMAGED

    arguments = build_parser().parse_args(argv)
    try:
        sys.exit(COMMANDS[arguments.command](arguments))
    except grpc.RpcError as error:
        where = getattr(arguments, "server", "the service")
        print(f"neardup {arguments.command}: {where}: {described(error, arguments)}", file=sys.stderr)
    except OSError as error:
        print(f"neardup {arguments.command}: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
    except SourceError as error:
        print(f"neardup {arguments.command}: {error}", file=sys.stderr)
    except lmdb.Error as error:  # a store the command reads directly (backup, index rebuild)
        damaged = STORE_DAMAGED.format(path=getattr(arguments, "data_dir", "the data directory"), error=error)
        print(f"neardup {arguments.command}: {damaged}", file=sys.stderr)
    sys.exit(1)


def described(error, arguments: argparse.Namespace) -> str:
    """A failed call in one line; where a plaintext channel was closed on us, the likely cause."""
    import grpc

    from service.api.channels import credentials_from

    said = f"{error.code().name}: {error.details()}"
    plaintext = not credentials_from(arguments).tls_ca
    if error.code() == grpc.StatusCode.UNAVAILABLE and plaintext and "refused" not in (error.details() or "").lower():
        said += " (if the service uses TLS, pass --tls-ca CA.pem or set NEARDUP_TLS_CA)"
    return said


if __name__ == "__main__":
    main()
