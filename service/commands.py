"""How each `neardup` subcommand is made: its --help shows its summary and each argument's default."""

import argparse


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each argument's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False, []):
            return action.help
        return super()._get_help_string(action)


def command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand of `commands` (an add_subparsers() result)."""
    return commands.add_parser(name, help=summary, description=summary, formatter_class=DefaultsShown)
