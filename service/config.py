"""The service's settings: one typed object, read from flags with NEARDUP_* environment defaults."""

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from service.decision import RULES, Policy

MODELS = ("sscd", "sscd_distilled")
CANVAS_SCALE = 1.1  # the seed's crops are cut from a resize to 1.1 x the network input


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("data")
    # host:port of an external Triton's gRPC endpoint; empty starts the bundled tritonserver.
    triton_url: str = ""
    # The Triton model repository the bundled tritonserver loads (the one in this checkout).
    model_repository: Path = Path(__file__).resolve().parent.parent / "model_repository"
    model: str = "sscd"
    input_size: int = 224
    # Views embedded per enrolment (and per Hash by default; 50 is the seed's recipe), and per
    # Check. One each wins on the benchmark (docs/quality.md).
    enroll_views: int = 1
    check_views: int = 1
    # Enroll: requests read ahead of the one being answered (then gRPC flow control slows the
    # client), and items per Triton request / LMDB transaction.
    enroll_window: int = 64
    enroll_batch: int = 16
    max_top_k: int = 100
    # How often the service looks for a new index snapshot.
    index_poll_s: float = 1.0
    # The decision rule and its parameters; the defaults live in service/decision.py (chosen and
    # calibrated on the benchmark, docs/quality.md). A geometric band of 0 turns the geometric
    # check off, and enrolment then stores no keypoints.
    decision: str = Policy.rule
    global_threshold: float = Policy.global_threshold
    clamp_min: float = Policy.clamp_min
    clamp_max: float = Policy.clamp_max
    margin_threshold: float = Policy.margin_threshold
    margin_beta: float = Policy.margin_beta
    normalization_beta: float = Policy.normalization_beta
    normalized_threshold: float = Policy.normalized_threshold
    geometric_band: float = Policy.geometric_band
    # Background features for the "normalized" rule: mean similarity to this many nearest.
    background_k: int = 5
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    min_image_side: int = 32
    # Longest a call to Triton may take when the caller set no shorter deadline.
    triton_timeout_s: float = 30.0
    health_poll_s: float = 1.0
    # Embedded Triton only: how long to wait after it dies before starting it again.
    triton_restart_delay_s: float = 2.0
    triton_start_timeout_s: float = 120.0

    @property
    def model_identity(self) -> str:
        """What the store records as the source of its features: the model and its input side."""
        return f"{self.model}@{self.input_size}"

    @property
    def policy(self) -> Policy:
        """The decision settings as a Policy (its `rule` is the `decision` setting)."""
        parameters = {f.name: getattr(self, f.name) for f in fields(Policy) if f.name != "rule"}
        return Policy(self.decision, **parameters)

    @property
    def canvas_size(self) -> int:
        """Side of the square image the front service sends to Triton."""
        return round(self.input_size * CANVAS_SCALE)


def validate_views(views: int) -> str | None:
    """Why a view count is not one the model makes, or None if it is."""
    if views in (1, 2) or (views >= 10 and views % 10 == 0):
        return None
    return f"views must be 1, 2 or a multiple of 10 (50 is the seed's recipe), got {views}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; each defaults to NEARDUP_<NAME> from the environment, then the default."""
    for field in fields(Settings):
        env_name = f"NEARDUP_{field.name.upper()}"
        default = os.environ.get(env_name, field.default)
        kwargs: dict = {"type": type(field.default), "default": type(field.default)(default)}
        if field.name == "model":
            kwargs["choices"] = MODELS
        if field.name == "decision":
            kwargs["choices"] = RULES
        parser.add_argument(f"--{field.name.replace('_', '-')}", help=f"(env {env_name})", **kwargs)


def settings_from_arguments(arguments: argparse.Namespace) -> Settings:
    settings = Settings(**{f.name: getattr(arguments, f.name) for f in fields(Settings)})
    for flag, views in (("--enroll-views", settings.enroll_views), ("--check-views", settings.check_views)):
        problem = validate_views(views)
        if problem:
            raise SystemExit(f"{flag}: {problem}")
    return settings
