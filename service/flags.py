"""The settings as command-line flags: one flag per setting, NEARDUP_* variables as defaults.

Every setting is one flag of `neardup serve` (the field's name, or the `flag` its metadata
names); each flag defaults to the environment variable NEARDUP_<FLAG> and then to the field's
default. A bad environment value is reported in one line naming the variable, when the
settings are read (so `--help` still works). Settings that would expose an open service are
refused here, before anything starts.
"""

import argparse
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from service.config import POLICY_FLAGS, Settings
from service.triton import contract
from service.triton.model_file import ModelFileRefused, read_once


@dataclass(frozen=True)
class Flag:
    group: str  # the Settings field holding it
    name: str  # the field's name in its group
    flag: str  # without the leading dashes
    default: object
    help: str
    choices: tuple[str, ...] | None
    section: str  # the --help section it is shown in: its group, or for the decision its stage
    secret: bool = False  # passed on by environment, never as an argument (as_arguments)

    @property
    def env(self) -> str:
        return "NEARDUP_" + self.flag.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def metavar(self) -> str:
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        kinds = ((int, "INT"), (float, "NUMBER"), (Path, "PATH"))
        return next((name for kind, name in kinds if isinstance(self.default, kind)), "TEXT")

    def convert(self, raw: str):
        if isinstance(self.default, bool):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError("expected true or false")
            return raw.lower() in ("1", "true", "yes")
        try:
            value = type(self.default)(raw)
        except ValueError:
            raise ValueError(f"expected {self.metavar.lower()}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"not one of {', '.join(self.choices)}")
        return value


def flags() -> list[Flag]:
    found = []
    for group in fields(Settings):
        for member in fields(group.default_factory):
            if "source" in member.metadata:  # a calibration constant, not an operator's setting
                continue
            flag, choices = member.metadata.get("flag"), member.metadata.get("choices")
            if group.name == "decision":
                flag, choices = POLICY_FLAGS.get(member.name, (None, None))
            flag = flag or member.name.replace("_", "-")
            section = f"decision: {member.metadata['stage']}" if group.name == "decision" else group.name
            help_text, secret = member.metadata["help"], member.metadata.get("secret", False)
            found.append(Flag(group.name, member.name, flag, member.default, help_text, choices, section, secret))
    return found


# The decision's sections in the order a Check runs its stages (core/stages/__init__.py).
DECISION_SECTIONS = ["pipeline", "search", "verification", "memory", "mirror", "geometric", "small_views", "regions"]


def section_order(section: str) -> int:
    groups = [group.name for group in fields(Settings)]
    if section.startswith("decision: "):
        return groups.index("decision") + DECISION_SECTIONS.index(section.removeprefix("decision: "))
    return groups.index(section) if groups.index(section) < groups.index("decision") else 100 + groups.index(section)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, its help text with its default and its environment variable, in a
    section per group of settings (the decision's by stage, in the order a Check runs them)."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for flag in sorted(flags(), key=lambda flag: section_order(flag.section)):
        if flag.section not in sections:
            sections[flag.section] = parser.add_argument_group(flag.section)
        section = sections[flag.section]

        def converter(raw: str, flag: Flag = flag):
            return flag.convert(raw)

        help_text = f"{flag.help} (default: {flag.default}; env {flag.env})"
        if isinstance(flag.default, bool):
            section.add_argument(
                f"--{flag.flag}", dest=flag.dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        converter.__name__ = type(flag.default).__name__  # argparse names the type in its errors
        section.add_argument(
            f"--{flag.flag}",
            dest=flag.dest,
            type=converter,
            default=None,
            metavar=flag.metavar,
            help=help_text,
        )


def settings_from_arguments(arguments: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flags first, then NEARDUP_* variables, then defaults; a bad value ends the program with one line."""
    environ = os.environ if environ is None else environ
    groups: dict[str, dict] = {group.name: {} for group in fields(Settings)}
    for flag in flags():
        value = getattr(arguments, flag.dest, None)
        if value is None and flag.env in environ:
            try:
                value = flag.convert(environ[flag.env])
            except ValueError as error:
                raise SystemExit(
                    f"neardup: {flag.env}={environ[flag.env]!r} is not a valid --{flag.flag}: {error}"
                ) from None
        if value is not None:
            groups[flag.group][flag.name] = value
    defaults = Settings()
    try:
        settings = Settings(**{name: replace(getattr(defaults, name), **values) for name, values in groups.items()})
    except ValueError as error:  # a decision setting out of its range (Policy.__post_init__)
        raise SystemExit(f"neardup: {error}") from None
    for flag, views in (
        ("--enroll-views", settings.triton.enroll_views),
        ("--check-views", settings.triton.check_views),
    ):
        problem = contract.view_problem(views)
        if problem:
            raise SystemExit(f"neardup: {flag}: {problem}")
    if settings.triton.header and "=" not in settings.triton.header:
        raise SystemExit("neardup: --triton-header must be NAME=VALUE")
    if problem := exposure_problem(settings):
        raise SystemExit(f"neardup: {problem}")
    return with_models_outputs(settings)


def with_models_outputs(settings: Settings) -> Settings:
    """The settings the served model implies: a --model-file's input side where it says. The windows
    need a model that outputs its feature map (the packaged models, run as distributed, do not). A
    file that does not meet the contract ends the program with one line."""
    triton = settings.triton
    if not triton.model_file:
        if settings.decision.region_windows:
            raise SystemExit(
                f"neardup: --region-windows needs a --model-file that outputs its feature map; model {triton.model} "
                "outputs only its embedding (docs/deployment.md)"
            )
        return settings
    try:
        model = read_once(Path(triton.model_file))
    except ModelFileRefused as error:
        raise SystemExit(f"neardup: --model-file refused: {error}") from None
    if settings.decision.region_windows and not model.feature_map:
        raise SystemExit(f"neardup: --region-windows needs a feature map, and {model.path} outputs none")
    return replace(settings, triton=replace(triton, input_size=model.input_size or triton.input_size))


def as_arguments(settings: Settings) -> list[str]:
    """The command-line flags that give these settings (a worker gets its supervisor's), secrets
    aside: they are as_environment's."""
    arguments = []
    for flag in flags():
        value = getattr(getattr(settings, flag.group), flag.name)
        if flag.secret:
            continue
        if isinstance(value, bool):
            arguments.append(f"--{flag.flag}" if value else f"--no-{flag.flag}")  # over a NEARDUP_* variable
        else:
            arguments += [f"--{flag.flag}", str(value)]
    return arguments


def as_environment(settings: Settings) -> dict[str, str]:
    """The secret settings as their NEARDUP_* variables: out of every process list, unlike arguments."""
    return {flag.env: str(getattr(getattr(settings, flag.group), flag.name)) for flag in flags() if flag.secret}


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def exposure_problem(settings: Settings) -> str | None:
    """Why the settings would expose an open service, or None."""
    security = settings.security
    if bool(security.tls_cert) != bool(security.tls_key):
        return "--tls-cert and --tls-key go together"
    if security.tls_client_ca and not security.tls_cert:
        return "--tls-client-ca needs --tls-cert and --tls-key"
    if settings.server.host not in LOOPBACK and not security.auth_tokens and not security.insecure:
        return (
            f"--host {settings.server.host} would let anyone who reaches the port read and delete everything: "
            "add --auth-tokens FILE (make tokens with `neardup token new NAME --roles ...`) and --tls-cert/--tls-key, "
            "or pass --insecure to accept that"
        )
    return None
