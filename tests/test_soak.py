"""benchmarks/soak.py, briefly: the mixed load runs against the real service, every load is answered as it
should be, and nothing acknowledged is missing after a restart (its figures: docs/operations.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_loses_nothing_acknowledged_and_answers_each_load(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.25", "--idle-seconds", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["enrolments_acknowledged"] > 0 and report["records_lost_after_restart"] == 0
    calls = report["calls"]
    assert set(calls["unauthenticated 8 MB Checks"]) == {"UNAUTHENTICATED"}
    assert calls["oversized Checks (36 Mpx)"].get("OK", 0) > 0
    assert report["check_ms"]["under_load"]["count"] > 0 and report["rss_mb"]["peak"] >= report["rss_mb"]["before"]
    assert "lost after a restart 0" in done.stdout
