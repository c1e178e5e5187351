"""The index's domain errors and the one table that maps them to gRPC status codes."""

import logging

import grpc

from imgsim.streams import StreamIdle

log = logging.getLogger(__name__)


class IndexServiceError(Exception):
    """Base of the errors a caller can be told about; the message is safe to send."""


class InvalidArgument(IndexServiceError):
    """A request field is malformed or out of its limits."""


class DimensionMismatch(IndexServiceError):
    """A vector's dimension differs from the index's."""


class ModelMismatch(IndexServiceError):
    """Vectors or queries from another model than the one whose vectors the index holds."""


class StorageFull(IndexServiceError):
    """The data directory's disk is full; nothing of the write was kept."""


class NotReady(IndexServiceError):
    """The index is loading or draining."""


class DeadlineExceeded(IndexServiceError):
    """The caller's deadline passed before the work started; it was not done."""


STATUS_CODES: dict[type[IndexServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    DimensionMismatch: grpc.StatusCode.INVALID_ARGUMENT,
    ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def abort_for(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the call with the status the error maps to. Unknown errors are INTERNAL, logged once, not leaked."""
    if isinstance(error, IndexServiceError):
        context.abort(STATUS_CODES[type(error)], str(error))
    if isinstance(error, StreamIdle):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    log.exception("internal error in index call", exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, "internal error in the index; see its log")
