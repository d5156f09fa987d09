"""The `neardup` command."""

import argparse
import asyncio
import logging

from service.config import add_arguments, settings_from_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neardup", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gRPC service")
    add_arguments(serve_parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if arguments.command == "serve":
        from service.server import serve

        asyncio.run(serve(settings_from_arguments(arguments)))


if __name__ == "__main__":
    main()
