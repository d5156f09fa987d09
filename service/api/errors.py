"""The one place where exceptions become gRPC statuses (unary and streaming methods)."""

import functools
import inspect
import logging
from collections.abc import Callable

import grpc

from service.api.scope import OutOfScope
from service.core.errors import KeyNotFound, QuotaReached, RequestError
from service.core.streams import StreamIdle
from service.media.imaging import ImageError
from service.overload import DeadlinePassed, Overloaded
from service.storage.manifest import SnapshotError
from service.storage.records import ModelMismatch, StoreUnwritable
from service.storage.vector_index import IndexUnavailable
from service.triton.client import TritonRejected, TritonTimeout, TritonUnavailable

log = logging.getLogger(__name__)


STATUS_OF_ERROR: list[tuple[type[Exception], grpc.StatusCode]] = [
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (OutOfScope, grpc.StatusCode.PERMISSION_DENIED),
    (KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (SnapshotError, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnwritable, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlinePassed, grpc.StatusCode.DEADLINE_EXCEEDED),
    (StreamIdle, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TritonUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TritonTimeout, grpc.StatusCode.UNAVAILABLE),
    (IndexUnavailable, grpc.StatusCode.UNAVAILABLE),  # its engine (Milvus) unreachable
    (TritonRejected, grpc.StatusCode.INTERNAL),
]
HANDLED = tuple(error for error, _ in STATUS_OF_ERROR)
# What the caller got wrong about one request (a bad image or field, a collection beyond its
# token): a streamed item's error.
CALLER_MISTAKES = (ImageError, RequestError, OutOfScope)


def status_of(error: Exception) -> grpc.StatusCode:
    return next(code for kind, code in STATUS_OF_ERROR if isinstance(error, kind))


async def abort(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    code = status_of(error)
    log.info("%s: %s: %s", method, code.name, error)
    await context.abort(code, str(error))


def grpc_errors(method: Callable) -> Callable:
    """Decorates a servicer method: the errors in STATUS_OF_ERROR abort the call with their status."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context: grpc.aio.ServicerContext):
            try:
                async for response in method(self, request, context):
                    yield response
            except HANDLED as error:
                await abort(context, method.__name__, error)

        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except HANDLED as error:
            await abort(context, method.__name__, error)

    return wrapper
