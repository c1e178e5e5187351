"""The index's domain errors and the one table that maps them to gRPC status codes."""

import logging

import grpc

from imgsim.streams import StreamIdle

log = logging.getLogger(__name__)


class IndexServiceError(Exception):
    """Base of the errors a caller can be told about; the message is safe to send."""


class InvalidArgument(IndexServiceError):
    """A request field is malformed or out of its limits."""


class DimensionMismatch(InvalidArgument):
    """A vector's dimension differs from the collection's."""


class ModelMismatch(IndexServiceError):
    """Vectors or queries from another model than the one whose vectors the collection holds."""


class CollectionNotFound(IndexServiceError):
    """No collection of that name."""


class CollectionExists(IndexServiceError):
    """A collection of that name exists already (with other settings, or exist_ok was not set)."""


class StorageFull(IndexServiceError):
    """The disk or the storage quota is full; nothing of the write was kept."""


class StorageReadOnly(IndexServiceError):
    """The data directory cannot be written."""


class CatalogDamaged(IndexServiceError):
    """The catalog's SQLite file is damaged."""


class NotReady(IndexServiceError):
    """The index is loading or draining."""


class DeadlineExceeded(IndexServiceError):
    """The caller's deadline passed before the work was done; none of it was kept."""


class Cancelled(IndexServiceError):
    """The call ended (client gone, server stopping) before its write committed; nothing was kept."""


STATUS_CODES: dict[type[IndexServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    DimensionMismatch: grpc.StatusCode.INVALID_ARGUMENT,
    ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    CollectionNotFound: grpc.StatusCode.NOT_FOUND,
    CollectionExists: grpc.StatusCode.ALREADY_EXISTS,
    StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageReadOnly: grpc.StatusCode.FAILED_PRECONDITION,
    CatalogDamaged: grpc.StatusCode.DATA_LOSS,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for an error. Unknown errors are INTERNAL, logged once with
    their traceback, and leak nothing."""
    if isinstance(error, IndexServiceError):
        return STATUS_CODES[type(error)], str(error)
    if isinstance(error, StreamIdle):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    log.error("internal error in an index call", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error in the index; see its log"
