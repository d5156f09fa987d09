"""The server's interceptor chain: cross-cutting concerns around every call, in order.

Today: a request id per call (the caller's `x-request-id` metadata, or a new one), kept in a
context variable so that every log line written for the call carries it. Authentication and
metrics go into the same chain.
"""

import contextvars
import inspect
import logging
import uuid
from collections.abc import Callable

import grpc

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 64


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record ("-" outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class RequestIds(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        given = dict(details.invocation_metadata or ()).get(REQUEST_ID_HEADER, "")
        request_id = str(given)[:MAX_REQUEST_ID_CHARS] if given else uuid.uuid4().hex[:16]
        return around_handler(handler, lambda: REQUEST_ID.set(request_id))


def around_handler(handler: grpc.RpcMethodHandler, before: Callable[[], object]) -> grpc.RpcMethodHandler:
    """The same handler, calling before() in the call's own context before its method runs."""
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behaviour = getattr(handler, kind)

    if inspect.isasyncgenfunction(behaviour):

        async def wrapped(request, context):
            before()
            async for response in behaviour(request, context):
                yield response

    else:

        async def wrapped(request, context):
            before()
            return await behaviour(request, context)

    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def interceptor_chain() -> list[grpc.aio.ServerInterceptor]:
    return [RequestIds()]
