"""Collection-scoped tokens: the collections a caller may name, search, change and see.

A token file entry may carry `"collections": ["team-a", ""]` ("" is the default collection);
without it the token reaches every collection. Authentication (auth.py) sets SCOPE for the call;
the servicer asks this module before it reads, writes or answers with anything of a collection:
- a Check (or CheckStream item) without `collections` searches the token's own; naming another
  is PERMISSION_DENIED, so a match, its key and its metadata never come from another team;
- an Enroll item into another collection is INVALID with the reason; Delete, SetCollection,
  Dismiss (both sides) and FindDuplicates naming one are PERMISSION_DENIED;
- ListDismissals and Stats show only the token's collections; RemoveDismissal of another
  collection's entry is NOT_FOUND, as if it did not exist.
Hash and ReloadIndex name no collection and are left to the roles.
"""

import contextvars
from collections.abc import Iterable

# The calling token's collections; None: every collection (no token file, or no list in the entry).
SCOPE: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("scope", default=None)


class OutOfScope(PermissionError):
    """The request names a collection the caller's token does not reach (PERMISSION_DENIED)."""


def _listed(scope: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in sorted(scope))


def reaches(collection: str) -> bool:
    scope = SCOPE.get()
    return scope is None or collection in scope


def problem(collection: str) -> str | None:
    """Why the caller's token cannot reach `collection` (None: it can)."""
    if reaches(collection):
        return None
    return f"this token does not reach collection {collection!r}; it is limited to {_listed(SCOPE.get())}"


def require(collection: str) -> None:
    """OutOfScope unless the caller's token reaches `collection`."""
    if refused := problem(collection):
        raise OutOfScope(refused)


def searched(requested: frozenset[str] | None) -> frozenset[str] | None:
    """The collections a Check searches: those it asked for (every one: None), within the token's."""
    scope = SCOPE.get()
    if scope is None:
        return requested
    for name in requested or ():
        require(name)
    return requested or scope


def whole_catalogue_allowed(what: str) -> None:
    """OutOfScope for a scoped token asking for something across every collection."""
    scope = SCOPE.get()
    if scope is not None:
        raise OutOfScope(
            f"{what} across every collection needs a token that reaches them all; name one of {_listed(scope)}"
        )
