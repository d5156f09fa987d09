"""The `neardup` command: run the service, or enrol and check images against a running one."""

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from service.config import add_arguments, settings_from_arguments

DEFAULT_SERVER = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neardup", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("serve", help="run the gRPC service"))

    enroll = commands.add_parser("enroll", help="enrol a folder of images, or the files listed in a text file")
    enroll.add_argument("source", type=Path, help="a folder (searched recursively) or a file with one path a line")
    enroll.add_argument("--server", default=DEFAULT_SERVER)

    check = commands.add_parser("check", help="is each image a near-duplicate of an enrolled one?")
    check.add_argument("images", type=Path, nargs="+")
    check.add_argument("--server", default=DEFAULT_SERVER)
    check.add_argument("--top-k", type=int, default=1)
    check.add_argument("--json", action="store_true", help="one JSON object per image")
    return parser


def run_enroll(arguments: argparse.Namespace) -> int:
    from service.client import connect, enroll, image_paths

    paths = image_paths(arguments.source)
    summary = enroll(connect(arguments.server), ((str(p), p) for p in paths), total=len(paths))
    for key, why in summary.failures:
        print(f"failed: {key}: {why}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failures else 0


def run_check(arguments: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from service.client import connect
    from service.proto.neardup.v1 import neardup_pb2 as pb

    stub = connect(arguments.server)
    failed = False
    for path in arguments.images:
        try:
            reply = stub.Check(pb.CheckRequest(image=path.read_bytes(), top_k=arguments.top_k), timeout=60)
        except (OSError, grpc.RpcError) as error:
            why = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else str(error)
            print(json.dumps({"image": str(path), "error": why}) if arguments.json else f"{path}: error: {why}")
            failed = True
            continue
        if arguments.json:
            answer = MessageToDict(reply, always_print_fields_with_no_presence=True)
            print(json.dumps({"image": str(path), **answer}))
            continue
        verdict = "DUPLICATE of" if reply.is_duplicate else "new; nearest"
        nearest = reply.matches[0] if reply.matches else None
        described = f"{nearest.key} (distance {nearest.distance:.3f}, threshold {nearest.threshold:.3f})"
        print(f"{path}: {verdict} {described}" if nearest else f"{path}: new (nothing enrolled)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        from service.server import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(serve(settings_from_arguments(arguments)))
    elif arguments.command == "enroll":
        sys.exit(run_enroll(arguments))
    else:
        sys.exit(run_check(arguments))


if __name__ == "__main__":
    main()
