"""The layers hold: the API is a thin edge over core (no storage or media but for the error table
and health), and every registered vector backend implements the whole backend interface."""

import ast
import inspect
from pathlib import Path

import pytest

from service.config import IndexSettings
from service.storage.backends import BACKENDS, DEFAULT_BACKEND
from service.storage.vector_index import IndexBackend

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "service" / "api"
MAY_IMPORT_STORAGE = {"errors.py", "health.py"}  # the exception -> status table; the health probes


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda path: path.name)
def test_the_api_imports_no_storage_or_media(path):
    if path.name in MAY_IMPORT_STORAGE:
        return
    below = [m for m in imported_modules(path) if m.split(".")[:2] in (["service", "storage"], ["service", "media"])]
    assert below == [], f"{path.name} imports {below}: go through a core object (service/core/) instead"


def interface() -> dict[str, object]:
    """The members IndexBackend declares, its VectorIndex ones included."""
    members = {}
    for protocol in (IndexBackend, *IndexBackend.__mro__):
        if getattr(protocol, "_is_protocol", False) and protocol.__module__ == IndexBackend.__module__:
            members.update({name: value for name, value in vars(protocol).items() if not name.startswith("_")})
            members.update(dict.fromkeys(getattr(protocol, "__annotations__", {})))
    return members


def test_the_interface_covers_the_whole_life_cycle():
    wanted = {"open", "on_commit", "reload", "watch", "rebuild", "add_rebuild_arguments", "nearest", "identical",
              "apply_changes", "stats", "bytes_on_disk", "manifest", "failure", "rebuild_help"}  # fmt: skip
    assert wanted <= interface().keys()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_implements_the_whole_interface(name):
    backend = BACKENDS[name]
    missing = [member for member in interface() if not hasattr(backend, member)]
    assert missing == [], f"backend {name} lacks {missing}"
    for member, declared in interface().items():
        if inspect.isfunction(declared) or isinstance(declared, classmethod):
            implemented = inspect.getattr_static(backend, member)
            assert isinstance(implemented, classmethod) == isinstance(declared, classmethod), (name, member)
            wanted = list(inspect.signature(getattr(IndexBackend, member)).parameters)
            assert list(inspect.signature(getattr(backend, member)).parameters) == wanted, (name, member)
    assert inspect.iscoroutinefunction(backend.watch)


def test_the_backend_flag_offers_the_registry():
    [choices] = [f.metadata["choices"] for f in IndexSettings.__dataclass_fields__.values() if f.name == "backend"]
    assert tuple(choices) == tuple(BACKENDS)
    assert IndexSettings().backend == DEFAULT_BACKEND
