"""The README's command blocks, run as written against a real service (docs/operations.md has no
command block: its commands are the README's and the CLI's). Only what cannot be the same here is
changed: the service's port (the address in the block, or NEARDUP_SERVER where the block names
none), `.venv/bin/` (the test's own environment) and the README's placeholders (photo.jpg, <token>,
host:50051), which are given real files and values. The two opening commands are what CI and a
fresh clone run (tests/test_packaging.py serves an installed wheel); "Measuring it" needs the
shared datasets, which only our machines have."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.conftest import IMAGES

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
FAST = ("--enroll-views", "1", "--check-views", "1")


def blocks() -> dict[str, list[str]]:
    """The README's ```bash blocks, in order, by the `## ` heading they sit under ("" before the first)."""
    found, heading = {}, ""
    for match in re.finditer(r"^## ([^\n]+)$|^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1)
        else:
            found.setdefault(heading, []).append(match.group(2))
    return found


@pytest.fixture
def workdir(tmp_path):
    """A folder like a checkout for the blocks: tests/images, and the files the README names."""
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    shutil.copy(IMAGES / "gnome-wood.jpg", tmp_path / "photo.jpg")
    shutil.copy(IMAGES / "gnome-truchet.jpg", tmp_path / "other.png")
    shutil.copy(IMAGES / "gnome-adwaita.jpg", tmp_path / "not-the-same.jpg")
    return tmp_path


def bash(script: str, cwd: Path, port: int, **environment: str) -> subprocess.CompletedProcess:
    script = script.replace(".venv/bin/", f"{BIN}/").replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARDUP_")}
    env.update(NEARDUP_SERVER=f"127.0.0.1:{port}", **environment)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_readme_has_the_blocks_this_test_runs():
    found = blocks()
    assert [len(found[heading]) for heading in ("", "Calling it", "Collections", "Security")] == [2, 2, 1, 1]
    assert found["Measuring it"]


def test_the_readme_reads_in_five_minutes():
    """Under 15 KB, no paragraph over 150 words (code blocks and tables aside)."""
    text = re.sub(r"^```.*?^```$", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith("|")]
    assert len((ROOT / "README.md").read_bytes()) < 15_000
    assert max(len(paragraph.split()) for paragraph in paragraphs) <= 150


def test_calling_it_and_collections_as_written(workdir, start_service):
    service = start_service(*FAST)
    grpcurl, command_line = blocks()["Calling it"]
    called = bash(grpcurl, workdir, service.port)
    assert called.returncode == 0, called.stderr
    assert "neardup.v1.NearDup" in called.stdout and '"status": "SERVING"' in called.stdout
    assert called.stdout.count('"model": "sscd"') >= 4  # the Hash, and each Check of the stream

    ran = bash(command_line, workdir, service.port)
    assert ran.returncode == 0, ran.stderr
    assert "0 failed" in ran.stdout and "photo.jpg: IDENTICAL to tests/images/gnome-wood.jpg" in ran.stdout
    assert '"records":' in ran.stdout and ran.stdout.strip().endswith("SERVING")

    [collections] = blocks()["Collections"]
    ran = bash(collections, workdir, service.port)
    assert ran.returncode == 0, ran.stderr
    assert '"collection": "shop-a"' in ran.stdout and '"own_settings": true' in ran.stdout
    assert '"dismissals"' in ran.stdout and '"records_total"' in ran.stdout


def test_security_as_written(workdir, tmp_path):
    """The Security block with certificates for 127.0.0.1 in secrets/ (as docs/security.md says to
    make them): the token file it writes, the service it starts, and the calls it makes."""
    from service.api.channels import Credentials, channel
    from service.triton.process import free_port
    from tools.service_process import RunningService, health_status, wait_for

    [security] = blocks()["Security"]
    lines = security.replace("\\\n", "").splitlines()
    [serve] = [n for n, line in enumerate(lines) if " serve " in line]
    made = bash("\n".join(lines[:serve]), workdir, 0)
    assert made.returncode == 0, made.stderr
    [token] = re.findall(r"it is not stored anywhere\): (\S+)", made.stderr)
    assert token not in (workdir / "secrets" / "tokens.json").read_text()  # only its digest is
    for secret in ("secrets/tokens.json", "secrets/tls.key"):  # in a checkout, they stay out of git
        assert subprocess.run(["git", "check-ignore", "-q", secret], cwd=ROOT).returncode == 0

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "secrets" / "ca.pem"))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(workdir / "secrets" / "tls.crt"))
    issued.private_key_pem.write_to_path(str(workdir / "secrets" / "tls.key"))
    port = free_port()
    flags = lines[serve].split(" serve ")[1].replace("secrets/", f"{workdir}/secrets/").split()
    service = RunningService(tmp_path / "data", *flags, *FAST, port=port)
    try:
        secured = channel(f"127.0.0.1:{port}", Credentials(tls_ca=str(workdir / "secrets" / "ca.pem")))
        wait_for(lambda: health_status(secured) == 1, 120, "the secured service to serve")
        rest = "\n".join(lines[serve + 1 :]).replace("<token>", token).replace("host:50051", f"127.0.0.1:{port}")
        called = bash(rest, workdir, port)
        assert called.returncode == 0, called.stderr + service.output()
        assert "photo.jpg: new (nothing enrolled)" in called.stdout and "neardup.v1.NearDup" in called.stdout
    finally:
        service.stop()
