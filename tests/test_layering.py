"""Imports inside service/ go one way, down its layers; service/ never reaches into the tools,
benchmarks or tests beside it; and the tools and benchmarks import the installed package (run as
`python -m tools.X` / `python -m benchmarks.X` from the root) without editing sys.path.

Every module is read with `ast`, so an import inside a function counts as much as one at the top.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

# The architecture, top to bottom: a module of a layer may import its own row and the rows below it,
# never a row above; the modules directly under service/ (config, metrics, proto, app, ...) are
# outside these rows and open to all of them.
LAYERS = (
    ("api",),  # gRPC: servicer, errors -> statuses, health, interceptors, channels
    ("core",),  # checking, enrolment, the decision (no protobuf)
    ("media", "storage", "triton"),  # pictures, the store and indexes, the model server
)
OUTSIDE = ("tools", "benchmarks", "tests")  # beside the package, never imported by it


def row_of(layer: str) -> int:
    return next(row for row, layers in enumerate(LAYERS) if layer in layers)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module the file imports, as dotted names; `from a import b` counts both a and a.b."""
    names = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def service_imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import in a module of service/."""
    return [
        (module_name(path), name)
        for path in sorted((ROOT / "service").rglob("*.py"))
        for name in sorted(imported(path))
    ]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "service" and len(parts) >= 2 and any(parts[1] in row for row in LAYERS):
        return parts[1]
    return None


def test_every_layer_named_in_the_table_is_a_package_of_service():
    for row in LAYERS:
        for layer in row:
            assert (ROOT / "service" / layer / "__init__.py").exists(), layer
    assert any(layer_of(module) for module, _ in service_imports())


# A known violation being mended elsewhere: mark its layer alone, e.g. pytest.param("core", marks=
# pytest.mark.xfail(strict=True, reason="service.core.x imports service.api.y")), and remove the mark with the fix.
@pytest.mark.parametrize("layer", [layer for row in LAYERS for layer in row])
def test_a_layer_imports_only_its_own_row_and_the_rows_below(layer):
    upward = sorted(
        f"{module} imports {name}"
        for module, name in service_imports()
        if layer_of(module) == layer and layer_of(name) and row_of(layer_of(name)) < row_of(layer)
    )
    assert not upward, "\n".join(upward)


def test_nothing_in_service_imports_the_tools_benchmarks_or_tests():
    outward = sorted(f"{module} imports {name}" for module, name in service_imports() if name.split(".")[0] in OUTSIDE)
    assert not outward, "\n".join(outward)


def test_no_tool_or_benchmark_touches_sys_path():
    touching = []
    for path in sorted([*(ROOT / "tools").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            sys_path = isinstance(node, ast.Attribute) and node.attr == "path"
            sys_path = sys_path and isinstance(node.value, ast.Name) and node.value.id == "sys"
            from_sys = isinstance(node, ast.ImportFrom) and node.module == "sys"
            from_sys = from_sys and any(alias.name == "path" for alias in node.names)
            if sys_path or from_sys:
                touching.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not touching, "sys.path used (run the tool as a module from the root instead): " + ", ".join(touching)
