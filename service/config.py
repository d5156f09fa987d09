"""The service's settings: one typed object, grouped by concern, read from flags with NEARDUP_* defaults.

Every setting is one flag of `neardup serve` (the field's name, or the `flag` its metadata
names); each flag defaults to the environment variable NEARDUP_<FLAG> and then to the field's
default. A bad environment value is reported in one line naming the variable, when the
settings are read (so `--help` still works).
"""

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from service.core.decision import RULES, Policy
from service.triton import contract
from service.triton.process import default_model_repository


def setting(default, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None):  # noqa: A002
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", "address the gRPC service listens on")
    port: int = setting(50051, "port the gRPC service listens on")
    data_dir: Path = setting(Path("data"), "where the store (store.lmdb/) and the index snapshots (index/) live")


@dataclass(frozen=True)
class SecuritySettings:
    auth_tokens: str = setting(
        "",
        "JSON file of token digests and roles (see `neardup token new`); re-read on SIGHUP; empty: no auth, "
        "loopback only",
    )
    tls_cert: str = setting("", "PEM certificate chain for TLS (with --tls-key); re-read on SIGHUP")
    tls_key: str = setting("", "PEM private key for TLS")
    tls_client_ca: str = setting("", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")
    insecure: bool = setting(False, "allow a non-loopback --host without --auth-tokens (warned at every start)")


@dataclass(frozen=True)
class LimitSettings:
    max_request_bytes: int = setting(32 * 1024 * 1024, "largest request (and answer) in bytes")
    max_image_pixels: int = setting(64_000_000, "largest image in pixels, as its header claims")
    # Thumbnails are real queries; below 8 px there is nothing left to compare (docs/quality.md).
    min_image_side: int = setting(8, "smallest image side in pixels")
    max_decoded_bytes: int = setting(
        400_000_000, "most memory one image's decode may hold (pixels x bands x bit depth, and the RGB copy)"
    )
    decode_budget_bytes: int = setting(
        1_500_000_000,
        "most memory all decodes in progress may hold together; past it a call waits 1 s, then RESOURCE_EXHAUSTED",
    )
    max_top_k: int = setting(100, "most matches a Check may ask for")
    max_views: int = setting(100, "most views a Hash may ask for")
    max_metadata_entries: int = setting(64, "most metadata entries per enrolled image")
    max_metadata_bytes: int = setting(8192, "most bytes of metadata (keys and values, UTF-8) per enrolled image")
    max_concurrent_calls: int = setting(
        64, "calls of the NearDup service in progress at once; more are answered RESOURCE_EXHAUSTED at once"
    )
    max_triton_queue: int = setting(
        256,
        "views queued for or in Triton at once; a Check or Hash past it is answered RESOURCE_EXHAUSTED, "
        "an Enroll waits",
    )
    enroll_window: int = setting(64, "Enroll requests read ahead of the one being answered")
    enroll_window_bytes: int = setting(64 << 20, "bytes of Enroll requests read ahead of the one being answered")
    enroll_batch: int = setting(16, "Enroll items per Triton request and per LMDB transaction")
    stream_idle_s: float = setting(60.0, "an Enroll stream that sends nothing for this long is closed")
    connection_idle_s: float = setting(600.0, "a connection with no call for this long is closed")
    keepalive_s: float = setting(60.0, "the server pings an idle connection this often to find dead peers")


@dataclass(frozen=True)
class TritonSettings:
    url: str = setting(
        "", "host:port of an external Triton's gRPC endpoint; empty starts the bundled one", flag="triton-url"
    )
    model_repository: Path = setting(default_model_repository(), "the model repository the bundled tritonserver loads")
    model: str = setting(
        "sscd", "sscd (ResNet50, int8) or sscd_distilled (MobileNetV4 student)", choices=contract.MODELS
    )
    input_size: int = setting(224, "the network's input side; the front service sends a 1.1x canvas")
    # One view each wins on the benchmark (docs/quality.md); 50 is the seed's recipe.
    enroll_views: int = setting(1, "views per enrolment, and per Hash when the request names none")
    check_views: int = setting(1, "views per Check")
    timeout_s: float = setting(
        30.0, "longest a call to Triton may take when the caller set no shorter deadline", flag="triton-timeout-s"
    )
    ssl_ca: str = setting("", "external Triton over TLS: PEM CA file to trust", flag="triton-ssl-ca")
    ssl_cert: str = setting("", "external Triton over mutual TLS: PEM client certificate", flag="triton-ssl-cert")
    ssl_key: str = setting("", "external Triton over mutual TLS: PEM client private key", flag="triton-ssl-key")
    header: str = setting(
        "",
        "NAME=VALUE sent with every call to an external Triton whose protocols are restricted (prefer the variable)",
        flag="triton-header",
    )
    health_poll_s: float = setting(1.0, "how often readiness (Triton and its model, the store's writes) is polled")
    restart_delay_s: float = setting(
        2.0, "bundled Triton only: wait after it dies before starting it again", flag="triton-restart-delay-s"
    )


@dataclass(frozen=True)
class IndexSettings:
    poll_s: float = setting(1.0, "how often the service looks for a new index snapshot", flag="index-poll-s")
    background_k: int = setting(5, "normalized rule: nearest background features averaged")


# Policy's fields are flags too; its rule is --decision.
POLICY_FLAGS = {"rule": ("decision", tuple(RULES))}


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    triton: TritonSettings = field(default_factory=TritonSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    decision: Policy = field(default_factory=Policy)

    @property
    def model_identity(self) -> str:
        """What the store records as the source of its features: the model and its input side."""
        return f"{self.triton.model}@{self.triton.input_size}"

    @property
    def canvas_size(self) -> int:
        return contract.canvas_size(self.triton.input_size)

    @property
    def index_dir(self) -> Path:
        return self.server.data_dir / "index"


@dataclass(frozen=True)
class Flag:
    group: str  # the Settings field holding it
    name: str  # the field's name in its group
    flag: str  # without the leading dashes
    default: object
    help: str
    choices: tuple[str, ...] | None

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
            flag, choices = member.metadata.get("flag"), member.metadata.get("choices")
            if group.name == "decision":
                flag, choices = POLICY_FLAGS.get(member.name, (None, None))
            flag = flag or member.name.replace("_", "-")
            found.append(Flag(group.name, member.name, flag, member.default, member.metadata["help"], choices))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, its help text with its default and its environment variable."""
    for flag in flags():

        def converter(raw: str, flag: Flag = flag):
            return flag.convert(raw)

        help_text = f"{flag.help} (default: {flag.default}; env {flag.env})"
        if isinstance(flag.default, bool):
            parser.add_argument(f"--{flag.flag}", dest=flag.dest, action="store_const", const=True, help=help_text)
            continue
        converter.__name__ = type(flag.default).__name__  # argparse names the type in its errors
        parser.add_argument(
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
    settings = Settings(**{name: replace(getattr(defaults, name), **values) for name, values in groups.items()})
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
    return settings


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
