"""Who may call what: bearer tokens with roles, checked by an interceptor.

The token file (`--auth-tokens`) holds SHA-256 digests, never tokens:

    {"tokens": [{"name": "search-api", "sha256": "<hex>", "roles": ["check"]},
                {"name": "team-a-ingest", "sha256": "<hex>", "roles": ["enroll", "check"],
                 "collections": ["team-a"]}, ...]}

Callers send `authorization: Bearer <token>`. Roles: `check` (Hash, Check, CheckStream, Stats),
`enroll` (Enroll, Delete, Dismiss, ListDismissals, RemoveDismissal), `admin` (ReloadIndex,
SetCollection, FindDuplicates). Reflection (what grpcurl lists) takes any valid token, whatever
its roles; health stays open for orchestrator probes. A missing or unknown token is
UNAUTHENTICATED, a known one without the role PERMISSION_DENIED; the method never runs, and the
request is not read (a refused caller's message costs no memory: `refusal`). The file
is read again on SIGHUP; a file that does not parse keeps the tokens in use. Logs name the caller
(the token's name), never a token. An entry's `collections` limits the token to those
collections (scope.py); without it the token reaches every one.
"""

import contextlib
import hashlib
import json
import logging
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.api.interceptors import CALLER, around_handler
from service.api.scope import SCOPE
from service.core.collections import name_problem

log = logging.getLogger(__name__)

ROLES = ("check", "enroll", "admin")
METHOD_ROLES = {
    "/neardup.v1.NearDup/Hash": "check",
    "/neardup.v1.NearDup/Check": "check",
    "/neardup.v1.NearDup/CheckStream": "check",
    "/neardup.v1.NearDup/Dismiss": "enroll",
    "/neardup.v1.NearDup/ListDismissals": "enroll",
    "/neardup.v1.NearDup/RemoveDismissal": "enroll",
    "/neardup.v1.NearDup/Stats": "check",
    "/neardup.v1.NearDup/Enroll": "enroll",
    "/neardup.v1.NearDup/Delete": "enroll",
    "/neardup.v1.NearDup/ReloadIndex": "admin",
}
ANY_ROLE = "any"  # a valid token is enough
SERVICE_ROLES = {
    "grpc.reflection.v1alpha.ServerReflection": ANY_ROLE,
    "grpc.reflection.v1.ServerReflection": ANY_ROLE,
}
OPEN_SERVICES = ("grpc.health.v1.Health",)
HEADER = "authorization"
DIGEST = re.compile(r"[0-9a-f]{64}")


class TokenFileError(ValueError):
    """The token file cannot be used; the message says why (and never holds a token)."""


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    collections: frozenset[str] | None = None  # None: every collection


def collections_problem(collections) -> str | None:
    """Why an entry's `collections` cannot be used, or None."""
    if not isinstance(collections, list) or not all(isinstance(name, str) for name in collections):
        return "'collections' must be a list of collection names (\"\" for the default one)"
    if not collections:
        return "'collections' is empty: the token would reach nothing (leave it out to reach every collection)"
    return next(filter(None, map(name_problem, collections)), None)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, roles: list[str], collections: list[str] | None = None) -> tuple[str, dict]:
    """A fresh random token and its entry for the token file (limited to `collections` if given)."""
    if not name.strip():
        raise TokenFileError("give the caller a name: it is logged for each of its calls")
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise TokenFileError(f"roles must be among {', '.join(ROLES)}; got {', '.join(roles) or 'none'}")
    if collections is not None and (problem := collections_problem(collections)):
        raise TokenFileError(problem)
    token = secrets.token_urlsafe(32)
    entry = {"name": name, "sha256": digest(token), "roles": sorted(set(roles))}
    if collections is not None:
        entry["collections"] = sorted(set(collections))
    return token, entry


def parse_tokens(raw: bytes, path: Path) -> dict[str, Caller]:
    """Digest -> caller, from the file's bytes; TokenFileError says what is wrong."""
    try:
        entries = json.loads(raw)["tokens"]
        if not isinstance(entries, list):
            raise TypeError("'tokens' is not a list")
        if not entries:
            raise ValueError("'tokens' is empty: every caller would be refused")
        callers = {}
        for number, entry in enumerate(entries, 1):
            name, sha256, roles = entry["name"], entry["sha256"], entry["roles"]
            if not isinstance(name, str) or not name:
                raise TypeError(f"entry {number}: 'name' must be a non-empty string")
            if not isinstance(sha256, str) or not DIGEST.fullmatch(sha256):
                raise TypeError(f"entry {number} ({name}): 'sha256' must be 64 lower-case hex digits")
            if not isinstance(roles, list) or not roles or set(roles) - set(ROLES):
                raise TypeError(f"entry {number} ({name}): 'roles' must be a list among {', '.join(ROLES)}")
            collections = entry.get("collections")
            if collections is not None and (problem := collections_problem(collections)):
                raise TypeError(f"entry {number} ({name}): {problem}")
            callers[sha256] = Caller(name, frozenset(roles), None if collections is None else frozenset(collections))
    except (ValueError, TypeError, KeyError) as error:
        raise TokenFileError(f"{path}: {type(error).__name__}: {error}") from None
    return callers


class Tokens:
    """The token file, read at start and again by reload() (SIGHUP)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.callers = parse_tokens(self._read(), self.path)

    def _read(self) -> bytes:
        try:
            mode = self.path.stat().st_mode
            raw = self.path.read_bytes()
        except OSError as error:
            raise TokenFileError(f"cannot read the token file {self.path}: {error.strerror}") from None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning(
                "the token file %s can be written by others (mode %o): whoever can write it can give "
                "themselves any role; chmod 600 it",
                self.path,
                stat.S_IMODE(mode),
            )
        return raw

    def reload(self) -> None:
        """Reads the file again; on any error the tokens in use stay."""
        try:
            self.callers = parse_tokens(self._read(), self.path)
        except TokenFileError as error:
            log.error("auth tokens not reloaded, the previous ones stay in use: %s", error)
            return
        log.info("auth tokens reloaded from %s: %d callers", self.path, len(self.callers))

    def caller(self, metadata) -> Caller | None:
        given = dict(metadata or ()).get(HEADER, "")
        scheme, _, token = str(given).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self.callers.get(digest(token.strip()))


def required_role(method: str) -> str | None:
    """The role a method needs (ANY_ROLE: a valid token); None for the open services (health)."""
    service = method.strip("/").split("/")[0]
    if service in OPEN_SERVICES:
        return None
    return METHOD_ROLES.get(method) or SERVICE_ROLES.get(service, "admin")


class Authentication(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        role = required_role(details.method)
        if handler is None or role is None:
            return handler
        caller = self.tokens.caller(details.invocation_metadata)
        if caller is None:
            log.warning("%s refused: no valid bearer token", details.method)
            return refusal(
                handler, grpc.StatusCode.UNAUTHENTICATED, "send a valid token as 'authorization: Bearer <token>'"
            )
        if role != ANY_ROLE and role not in caller.roles:
            log.warning("%s refused: caller %s lacks the %s role", details.method, caller.name, role)
            return refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"{details.method} needs the {role!r} role")

        @contextlib.asynccontextmanager
        async def authorised(context: grpc.aio.ServicerContext):
            CALLER.set(caller.name)
            SCOPE.set(caller.collections)
            yield

        return around_handler(handler, authorised)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler answering `code` that never reads the request: served as a request stream, a refused
    caller's message (up to --max-request-bytes) is not taken in, and costs the service no memory."""

    async def refuse(requests, context: grpc.aio.ServicerContext):
        await context.abort(code, details)

    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(refuse, response_serializer=handler.response_serializer)
