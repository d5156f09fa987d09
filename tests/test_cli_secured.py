"""Every `neardup` command against a service with auth and TLS on: each works with the right
credentials and says in one line what is missing otherwise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api.channels import Credentials
from tests.conftest import IMAGES
from tests.test_auth import FAST, pki, write_tokens  # noqa: F401 - pki is a fixture

ROOT = Path(__file__).parent.parent
TLS_HINT = "(if the service uses TLS, pass --tls-ca CA.pem or set NEARDUP_TLS_CA)"


@pytest.fixture(scope="module")
def secured_cli(tmp_path_factory, pki):  # noqa: F811 - the fixture imported above
    from tools.service_process import RunningService

    folder = tmp_path_factory.mktemp("secured-cli")
    tokens = write_tokens(folder / "tokens.json", {"searcher": ["check"], "ingest": ["enroll"], "operator": ["admin"]})
    flags = ["--auth-tokens", str(folder / "tokens.json"), "--tls-cert", pki["cert"], "--tls-key", pki["key"], *FAST]
    running = RunningService(folder / "data", *flags, credentials=Credentials(tls_ca=pki["ca"]))
    try:
        yield running.wait_serving(), tokens
    finally:
        running.stop()


def neardup(*arguments: str, token: str = "", tls_ca: str = "") -> subprocess.CompletedProcess:
    """The CLI with the token and the CA in its variables, as the README advises."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEARDUP_")}
    environment.update(NEARDUP_TOKEN=token, NEARDUP_TLS_CA=tls_ca)
    command = [sys.executable, "-m", "service.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT, env=environment)


# Each command that calls the service, the role it needs, and what it prints when it works.
COMMANDS = {
    "enroll": (["enroll", str(IMAGES / "gnome-wood.jpg")], "ingest", "enroll", "1 enrolled"),
    "check": (["check", str(IMAGES / "gnome-wood.jpg")], "searcher", "check", "IDENTICAL to"),
    "stats": (["stats"], "searcher", "check", '"records": "1"'),
    "index reload": (["index", "reload"], "operator", "admin", "index generation"),
    "duplicates": (["duplicates", "--json"], "operator", "admin", ""),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_works_with_its_role_and_says_what_is_missing_otherwise(secured_cli, pki, name):  # noqa: F811
    service, tokens = secured_cli
    arguments, caller, role, printed = COMMANDS[name]
    server = ["--server", f"127.0.0.1:{service.port}"]
    if name != "enroll":  # what the others read is there
        neardup("enroll", str(IMAGES / "gnome-wood.jpg"), *server, token=tokens["ingest"], tls_ca=pki["ca"])

    worked = neardup(*arguments, *server, token=tokens[caller], tls_ca=pki["ca"])
    assert worked.returncode == 0 and printed in worked.stdout, worked.stderr

    def refused(**credentials) -> str:
        failed = neardup(*arguments, *server, **credentials)
        lines = [line for line in failed.stderr.splitlines() if line and not line.startswith(("enrolling", "records"))]
        assert failed.returncode == 1 and len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
        return lines[0]

    assert "UNAUTHENTICATED: send a valid token as 'authorization: Bearer <token>'" in refused(tls_ca=pki["ca"])
    other = next(name for name in tokens if name != caller)
    denied = refused(token=tokens[other], tls_ca=pki["ca"])
    assert "PERMISSION_DENIED: /neardup.v1.NearDup/" in denied and f"needs the '{role}' role" in denied
    plaintext = refused(token=tokens[caller])
    assert "UNAVAILABLE" in plaintext and TLS_HINT in plaintext


def test_the_probe_and_the_local_commands_need_no_token(secured_cli, pki, tmp_path):  # noqa: F811
    service, tokens = secured_cli
    server = ["--server", f"127.0.0.1:{service.port}"]
    assert neardup("health", *server, tls_ca=pki["ca"]).stdout.strip().endswith("SERVING")  # open to probes
    made = neardup("token", "new", "search-api", "--roles", "check")
    assert made.returncode == 0 and json.loads(made.stdout.splitlines()[-1])["name"] == "search-api"
    copied = neardup("backup", str(tmp_path / "copy"), "--data-dir", str(service.data_dir))
    assert copied.returncode == 0 and "records" in copied.stdout, copied.stderr
    rebuilt = neardup("index", "rebuild", "--data-dir", str(service.data_dir), "--quiet", "--nice", "0")
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("index generation"), rebuilt.stderr
