"""Settings: grouped, one flag each with help and default, NEARDUP_* defaults, clear errors."""

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from service.cli import build_parser
from service.config import Settings
from service.core.decision import Policy
from service.flags import flags, settings_from_arguments

ROOT = Path(__file__).parent.parent


def settings(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return settings_from_arguments(build_parser().parse_args(["serve", *argv]), environ or {})


def serve(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service.cli", "serve", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_flags_fill_their_groups_and_the_policy_is_nested():
    chosen = settings("--triton-url", "triton:8001", "--decision", "global", "--margin-beta", "0.7", "--port", "6000")
    assert chosen.triton.url == "triton:8001" and chosen.server.port == 6000
    assert chosen.decision == Policy("global", margin_beta=0.7)
    assert settings() == Settings()


def test_a_flag_beats_the_environment_which_beats_the_default():
    assert settings(environ={"NEARDUP_ENROLL_WINDOW": "8"}).limits.enroll_window == 8
    assert settings("--enroll-window", "4", environ={"NEARDUP_ENROLL_WINDOW": "8"}).limits.enroll_window == 4
    assert settings(environ={"NEARDUP_DECISION": "seed"}).decision.rule == "seed"
    grid_on = {"NEARDUP_REGION_GRID": "true"}
    assert settings(environ=grid_on).decision.region_grid
    assert not settings("--no-region-grid", environ=grid_on).decision.region_grid


def test_every_setting_has_help_with_its_default_and_variable():
    shown = " ".join(serve("--help", env={"PATH": "/usr/bin:/bin"}).stdout.split())
    names = [flag.flag for flag in flags()]
    assert len(names) == len(set(names))
    for flag in flags():
        assert f"--{flag.flag}" in shown and f"(default: {flag.default}; env {flag.env})" in shown
    assert "triton-start-timeout" not in shown  # never read: removed


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [("NEARDUP_PORT", "fifty", "expected int"), ("NEARDUP_MODEL", "resnet", "not one of sscd, sscd_distilled")],
)
def test_a_bad_environment_value_is_one_line_and_help_still_works(variable, value, why):
    env = {"PATH": "/usr/bin:/bin", variable: value}
    refused = serve(env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == f"neardup: {variable}={value!r} is not a valid --{flags_by_env()[variable]}: {why}"
    helped = serve("--help", env=env)
    assert helped.returncode == 0 and "--port" in helped.stdout


def test_a_view_count_the_model_does_not_make_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="--check-views: views must be 1, 2 or a multiple of 10"):
        settings("--check-views", "3")


def flags_by_env() -> dict[str, str]:
    return {flag.env: flag.flag for flag in flags()}


def test_a_workers_arguments_give_its_supervisors_settings():
    from service.cli import build_parser
    from service.flags import as_arguments

    changed = settings_from_arguments(
        build_parser().parse_args(["serve", "--port", "6000", "--insecure", "--margin-threshold", "0.6"]), environ={}
    )
    again = settings_from_arguments(build_parser().parse_args(["serve", *as_arguments(changed)]), environ={})
    assert again == changed and again.security.insecure and again.server.port == 6000


def test_a_worker_gets_a_secret_by_its_environment_never_its_arguments():
    """Arguments show in every process list: --triton-header's NAME=VALUE reaches a worker as
    NEARDUP_TRITON_HEADER, and the worker's settings are its supervisor's all the same."""
    from service.cli import build_parser
    from service.flags import as_arguments, as_environment

    secret = "x-triton-key=hunter2-do-not-show"
    changed = settings_from_arguments(build_parser().parse_args(["serve"]), environ={"NEARDUP_TRITON_HEADER": secret})
    arguments, environment = as_arguments(changed), as_environment(changed)
    assert not any("hunter2" in argument for argument in arguments) and "--triton-header" not in arguments
    assert environment == {"NEARDUP_TRITON_HEADER": secret}
    again = settings_from_arguments(build_parser().parse_args(["serve", *arguments]), environ=environment)
    assert again == changed and again.triton.header == secret


def test_a_decision_setting_is_a_flag_or_a_calibration_constant_with_its_source_in_the_docs():
    decision_flags = {flag.name for flag in flags() if flag.group == "decision"}
    calibration = [member for member in fields(Policy) if "source" in member.metadata]
    assert calibration and decision_flags.isdisjoint(member.name for member in calibration)
    assert decision_flags | {member.name for member in calibration} == {member.name for member in fields(Policy)}
    documented = (Path(__file__).resolve().parent.parent / "docs" / "decision.md").read_text()
    for member in calibration:
        assert f"| `{member.name}` | `{member.metadata['stage']}` | {member.default} |" in documented, member.name
