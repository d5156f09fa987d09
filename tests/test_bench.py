"""The benchmarks run and print their figures (smoke runs, not timing tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.decision import SKIPPABLE_STAGES
from service.triton import contract
from tests.model_files import tiny_model

ROOT = Path(__file__).parent.parent


def test_the_quick_benchmark_prints_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--images", str(ROOT / "tests" / "images"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    sections = {"model", "check", "enroll", "preprocessing", "search", "store", "rebuild", "wire", "profile"}
    assert sections <= set(figures)
    assert figures["model"]["onnxruntime in-process, batch 16 (img/s)"] > 0
    assert figures["search"]["10k f16 recall@1 vs exact"] > 0.9
    # f32 and f16 also search the i8 build's graph (the only way they are measured at 1M).
    for dtype in ("f32", "f16"):
        assert figures["search"][f"10k {dtype} on i8's graph recall@1 vs exact"] > 0.9
    assert figures["search"]["10k i8 distances computed per query"] > 0
    for clients in (1, 4, 16):
        assert figures["check"][f"Check, {clients} clients (img/s)"] > 0
    assert "of limit" in done.stdout and "x idle" in done.stdout
    # The profile accounts for both cores: every process, the benchmark's clients and idle time.
    for what in ("Check at 16 clients", "enrolled image"):
        spent = [value for name, value in figures["profile"].items() if name.startswith(f"CPU per {what}:")]
        assert len(spent) >= 5 and all(value >= 0 for value in spent[:-1])


def test_the_hnsw_frontier_tool_prints_the_curve():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hnsw_frontier", "--images", str(ROOT / "tests" / "images"),
         "--size", "3000", "--queries", "50", "--connectivity", "16"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connectivity 16 expansion-add 64" in done.stdout
    for expansion in (64, 96, 160, 192, 256):
        assert f"3k expansion {expansion} recall@1 vs exact" in done.stdout
    assert "3k distances computed per query" in done.stdout


def test_the_small_views_benchmark_prints_both_sides_of_each_figure():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.small_views", "--records", "3000", "--queries", "20"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "img/s with small views" in done.stdout and "without" in done.stdout
    assert "3,000 records with small views" in done.stdout
    assert "small views 3 MB (held)" in done.stdout  # 3,000 x 512 float16
    assert "search, k=8: index" in done.stdout and "small views" in done.stdout


def test_the_windows_benchmark_prints_each_request_beside_the_whole_query(tmp_path):
    """With a model that outputs its feature map (a tiny one: the figures are its own, not SSCD's)."""
    model = tiny_model(tmp_path / "tiny.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.windows", "--model-file", model, "--requests", "2", "--checks", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("the whole query (1 canvas of 246 px)", "three boxes", "the larger view alone", "the windows (77"):
        assert row in done.stdout, row
    assert done.stdout.count("x the whole query") == 4
    rows = [line for line in done.stdout.splitlines() if "x the boxes only" in line]
    views = [float(row.split(" views")[0].split()[-1]) for row in rows]
    assert len(views) == 2 and views[1] == pytest.approx(views[0] + contract.WINDOW_VIEW_COST)  # every one paid them


def test_the_check_cost_benchmark_prints_each_code_and_its_stages():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.check_cost", "--images", str(ROOT / "tests" / "images"), "--queries", "8"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "x (mean over 8 queries)" in done.stdout and "per image (one stream)" in done.stdout
    assert "records/s" in done.stdout
    for stage in SKIPPABLE_STAGES + ("embedding", "search"):
        assert f"  {stage:16s} reached by" in done.stdout, stage
    assert "embedding        reached by 100.0% of Checks" in done.stdout
