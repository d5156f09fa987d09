"""The service's settings: one typed object, grouped by concern. Every field is a flag of
`neardup serve` with a NEARDUP_* variable (service/flags.py); its metadata holds the help text.
"""

from dataclasses import dataclass, field
from pathlib import Path

from service.core.decision import MIRROR_POLICIES, RULES, Policy
from service.storage.backends import BACKENDS
from service.triton import contract, model_file
from service.triton.process import default_model_repository


def setting(
    default,
    help: str,  # noqa: A002
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
):
    """`secret`: its value never goes on a command line we make (a worker gets it by environment)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "secret": secret})


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", "address the gRPC service listens on")
    port: int = setting(50051, "port the gRPC service listens on")
    data_dir: Path = setting(Path("data"), "where the store (store.lmdb/) and the index snapshots (index/) live")
    workers: int = setting(1, "front processes on the port (one Triton and one data directory shared)")
    metrics_port: int = setting(9464, "Prometheus /metrics at this port (worker i: port + i); 0 serves none")
    metrics_host: str = setting("127.0.0.1", "address /metrics listens on (the metrics need no token)")
    log_format: str = setting("text", "log lines as text or as one JSON object each", choices=("text", "json"))


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
    duplicates_cpu_share: float = setting(
        0.5, "FindDuplicates: the share of one core it may use (the rest is left to Checks)"
    )
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
    max_dismissals_per_key: int = setting(
        100, "most 'not a duplicate' entries (Dismiss) against one key; each is compared on every Check that finds it"
    )
    max_concurrent_calls: int = setting(
        64, "calls of the NearDup service in progress at once; more are answered RESOURCE_EXHAUSTED at once"
    )
    max_calls_per_caller: int = setting(
        16,
        "NearDup calls one caller (a token, or a connection with auth off) may have in progress; "
        "more are answered RESOURCE_EXHAUSTED at once",
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
        "",
        "host:port of an external Triton's gRPC endpoint, or several separated by commas (requests go to those "
        "that are up, in turn); empty starts the bundled one",
        flag="triton-url",
    )
    model_repository: Path = setting(default_model_repository(), "the model repository the bundled tritonserver loads")
    model: str = setting(
        "sscd", "sscd (ResNet50, int8) or sscd_distilled (MobileNetV4 student)", choices=contract.MODELS
    )
    model_file: str = setting(
        "",
        "an ONNX file to serve instead of --model (docs/deployment.md: the contract; model_repository/onnx_file); "
        "its input side and feature map are read from it",
    )
    input_size: int = setting(224, "the network's input side; the front service sends a 1.1x canvas")
    # One view each wins on the benchmark (docs/quality-history.md, the dev set alone); 50 is the seed's recipe.
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
        secret=True,
    )
    health_poll_s: float = setting(1.0, "how often readiness (Triton and its model, the store's writes) is polled")
    restart_delay_s: float = setting(
        2.0, "bundled Triton only: wait after it dies before starting it again", flag="triton-restart-delay-s"
    )


@dataclass(frozen=True)
class IndexSettings:
    poll_s: float = setting(1.0, "how often the service looks for a new index snapshot", flag="index-poll-s")
    background_k: int = setting(5, "normalized rule: nearest background features averaged")
    stale_records: int = setting(
        50_000,
        "health component 'index' is NOT_SERVING (stale: rebuild) while more records than this were enrolled or "
        "removed since the snapshot",
        flag="index-stale-records",
    )
    backend: str = setting(
        "usearch",
        "where the vectors are searched: usearch (in this process, snapshots from `neardup index rebuild`) or "
        "milvus (a collection several front services share; docs/scaling.md)",
        flag="index-backend",
        choices=tuple(BACKENDS),
    )
    milvus_uri: str = setting("", "milvus backend: the Milvus address, e.g. http://milvus:19530")
    milvus_collection: str = setting("neardup", "milvus backend: the collection (one per model)")
    milvus_token_file: str = setting(
        "", "milvus backend: a file holding the Milvus token (user:password or an API key); empty: none"
    )


# Policy's fields are flags too; its rule is --decision.
POLICY_FLAGS = {"rule": ("decision", tuple(RULES)), "mirror": ("mirror", MIRROR_POLICIES)}


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
        return f"{self.model_name}@{self.triton.input_size}"

    @property
    def model_name(self) -> str:
        """The model as answers name it: --model, or for a --model-file its content (onnx_file:<sha256>)."""
        return model_file.identity(Path(self.triton.model_file)) if self.triton.model_file else self.triton.model

    @property
    def served_model(self) -> str:
        """The Triton model that makes the features: --model, or the entry that serves --model-file."""
        return contract.FILE_MODEL if self.triton.model_file else self.triton.model

    @property
    def dimensions(self) -> int:
        """The width of the model's embedding: a --model-file's own, else the packaged models'."""
        if self.triton.model_file:
            return model_file.read_once(Path(self.triton.model_file)).dimensions
        return contract.DIMENSIONS

    @property
    def canvas_size(self) -> int:
        return contract.canvas_size(self.triton.input_size)

    @property
    def index_dir(self) -> Path:
        return self.server.data_dir / "index"
