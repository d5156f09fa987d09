"""The package's shape: every module imports on its own (no import cycles). How long a module is
follows its one job (the pipeline issue replaced the line cap with tests/test_layering.py)."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "service"


def modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if "proto" in relative.parts or path.name == "__init__.py":
            continue
        found.append(".".join(relative.with_suffix("").parts))
    return found


def test_every_module_imports_first_in_a_fresh_interpreter():
    """A cycle shows only when a module of it is imported first, so each gets its own interpreter."""
    for name in modules():
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
