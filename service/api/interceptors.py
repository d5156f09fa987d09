"""The server's interceptor chain: cross-cutting concerns around every call, in order.

0. RpcMetrics: every call counted by service, method and status code, and timed (metrics.py);
   then Authentication (service/api/auth.py), when a token file is configured.
1. ParseRequests: requests are parsed here rather than by gRPC, so that bytes that are not a
   valid message (a string field with invalid UTF-8, a truncated message) get INVALID_ARGUMENT
   with the reason instead of UNKNOWN; in a request stream a malformed message reaches the
   method as a `Malformed` item, so one bad item does not end the stream.
2. RequestIds: a request id per call (the caller's `x-request-id` metadata, or a new one), kept
   in a context variable so that every log line written for the call carries it.
3. Lanes: the call's lane (interactive or bulk: BULK_METHODS) and its caller (the token's name,
   or the connection when auth is off), kept in service/scheduling.py's context variables: they
   decide where its CPU work and model requests queue.
4. Admission: at most `max_calls` calls of the NearDup service in progress, and at most
   `max_per_caller` of one caller's; the next one is answered RESOURCE_EXHAUSTED at once instead
   of queueing until its deadline. Health checks and reflection are not counted, so probes still
   answer under load; health's Watch streams, open to anyone and open for as long as their caller
   likes, have an allowance of their own (WATCHERS).
"""

import collections
import contextlib
import contextvars
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from service import metrics, scheduling

HEALTH_SERVICE = "grpc.health.v1.Health"
WATCHERS = 64  # health Watch streams open at once (each is held until its caller leaves)
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")  # the token's name (auth on)
# Calls whose work is bulk work (scheduling.py); a Hash of more views than a Check's is made bulk
# by the servicer.
BULK_METHODS = {"Enroll", "CheckStream", "FindDuplicates"}
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Malformed:
    """A message of a request stream that could not be parsed."""

    reason: str


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    requests = "stream" if handler.request_streaming else "unary"
    return requests + "_" + ("stream" if handler.response_streaming else "unary")


def rebuilt(handler: grpc.RpcMethodHandler, behaviour: Callable, request_deserializer=...) -> grpc.RpcMethodHandler:
    """The handler with another behaviour (and optionally another request deserializer)."""
    kind = kind_of(handler)
    if request_deserializer is ...:
        request_deserializer = handler.request_deserializer
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(behaviour, request_deserializer=request_deserializer, response_serializer=handler.response_serializer)


def around_handler(handler: grpc.RpcMethodHandler, around: Callable) -> grpc.RpcMethodHandler:
    """The same handler, its method run inside the async context manager around(context),
    entered in the call's own context."""
    behaviour = getattr(handler, kind_of(handler))

    if inspect.isasyncgenfunction(behaviour):

        async def wrapped(request, context):
            async with around(context):
                async for response in behaviour(request, context):
                    yield response

    else:

        async def wrapped(request, context):
            async with around(context):
                return await behaviour(request, context)

    return rebuilt(handler, wrapped)


class ParseRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        message = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        name = message.full_name if message is not None else "request"
        behaviour = getattr(handler, kind_of(handler))

        def problem(raw: bytes, error: Exception) -> str:
            return f"{len(raw)} bytes are not a valid {name}: {error}"

        if handler.request_streaming:

            async def parsed(raw_requests: AsyncIterator[bytes]):
                async for raw in raw_requests:
                    try:
                        yield parse(raw)
                    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends
                        yield Malformed(problem(raw, error))

            if inspect.isasyncgenfunction(behaviour):

                async def wrapped(raw_requests, context):
                    async for response in behaviour(parsed(raw_requests), context):
                        yield response

            else:

                async def wrapped(raw_requests, context):
                    return await behaviour(parsed(raw_requests), context)

        else:

            async def parse_or_abort(raw: bytes, context: grpc.aio.ServicerContext):
                try:
                    return parse(raw)
                except Exception as error:  # noqa: BLE001 - as above
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem(raw, error))

            if inspect.isasyncgenfunction(behaviour):

                async def wrapped(raw, context):
                    async for response in behaviour(await parse_or_abort(raw, context), context):
                        yield response

            else:

                async def wrapped(raw, context):
                    return await behaviour(await parse_or_abort(raw, context), context)

        return rebuilt(handler, wrapped, request_deserializer=None)


class RequestIds(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        given = dict(details.invocation_metadata or ()).get(REQUEST_ID_HEADER, "")
        request_id = str(given)[:MAX_REQUEST_ID_CHARS] if given else uuid.uuid4().hex[:16]

        @contextlib.asynccontextmanager
        async def with_request_id(context):
            REQUEST_ID.set(request_id)
            yield

        return around_handler(handler, with_request_id)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code, and times it (service/metrics.py)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.strip("/").partition("/")

        @contextlib.asynccontextmanager
        async def measured(context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                yield
                code = context.code() or grpc.StatusCode.OK
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                metrics.RPCS.labels(service, method, name).inc()
                metrics.RPC_SECONDS.labels(service, method).observe(time.perf_counter() - started)

        return around_handler(handler, measured)


class Lanes(grpc.aio.ServerInterceptor):
    """Runs each call of the service in its lane, as its caller (scheduling.in_lane)."""

    def __init__(self, service: str):
        self.prefix = f"/{service}/"

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        lane = scheduling.BULK if details.method.rpartition("/")[2] in BULK_METHODS else scheduling.INTERACTIVE

        @contextlib.asynccontextmanager
        async def in_lane(context: grpc.aio.ServicerContext):
            with scheduling.in_lane(lane, CALLER.get() or context.peer()):
                yield

        return around_handler(handler, in_lane)


class Admission(grpc.aio.ServerInterceptor):
    def __init__(self, prefix: str, max_calls: int, max_per_caller: int | None = None):
        """Counts the calls whose method starts with `prefix` ("/service/" or "/service/Method"),
        in all and per caller (scheduling.WHO)."""
        self.prefix = prefix
        self.max_calls = max_calls
        self.max_per_caller = max_per_caller or max_calls
        self.in_progress = 0
        self.per_caller: collections.Counter[str] = collections.Counter()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        return around_handler(handler, self.admitted)

    @contextlib.asynccontextmanager
    async def admitted(self, context: grpc.aio.ServicerContext):
        caller = scheduling.WHO.get()
        if self.in_progress >= self.max_calls:
            log.warning("overloaded: %d calls in progress; one refused", self.in_progress)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the service is at its limit of {self.max_calls} calls in progress; retry with backoff",
            )
        if self.per_caller[caller] >= self.max_per_caller:
            log.warning("caller at its limit: %d calls in progress; one refused", self.per_caller[caller])
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this caller has {self.max_per_caller} calls in progress, the most one caller may have "
                "(--max-calls-per-caller); finish or cancel some, then retry with backoff",
            )
        self.in_progress += 1
        self.per_caller[caller] += 1
        try:
            yield
        finally:
            self.in_progress -= 1
            self.per_caller[caller] -= 1
            if not self.per_caller[caller]:
                del self.per_caller[caller]


def interceptor_chain(
    service: str, max_calls: int, max_per_caller: int, authentication: grpc.aio.ServerInterceptor | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """Metrics outermost (every call is counted, refused ones too), then authentication (when
    on), so a caller without a valid token learns nothing more."""
    first = [RpcMetrics(), authentication] if authentication else [RpcMetrics()]
    calls = Admission(f"/{service}/", max_calls, max_per_caller)
    watchers = Admission(f"/{HEALTH_SERVICE}/Watch", WATCHERS)
    return [*first, ParseRequests(), RequestIds(), Lanes(service), calls, watchers]
