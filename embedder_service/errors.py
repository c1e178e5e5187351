"""The embedder's domain errors and the one table that maps them to gRPC status codes."""

import logging

import grpc

from imgsim.streams import StreamIdle

log = logging.getLogger(__name__)


class EmbedderError(Exception):
    """Base of the errors a caller can be told about; the message is safe to send."""


class InvalidRequest(EmbedderError):
    """The request as a whole is malformed: no images, too many, too large."""


class InvalidImage(EmbedderError):
    """One image could not be decoded or is outside the accepted limits. `reason` labels the failure in
    metrics: empty, not_an_image, too_large, decode_error, bad_id."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class Overloaded(EmbedderError):
    """The queue is full; the caller should retry after a short wait."""


class NotReady(EmbedderError):
    """The model is not loaded and warm yet, or the server is draining."""


class DeadlineExceeded(EmbedderError):
    """The caller's deadline passed before its images were embedded; their work was dropped."""


STATUS_CODES: dict[type[EmbedderError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidImage: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code_for(error: EmbedderError) -> grpc.StatusCode:
    return STATUS_CODES.get(type(error), grpc.StatusCode.INTERNAL)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for an error. Unknown errors are INTERNAL, logged once with
    their traceback, and leak nothing."""
    if isinstance(error, EmbedderError):
        return status_code_for(error), str(error)
    if isinstance(error, StreamIdle):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    log.error("internal error in an embedder call", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error in the embedder; see its log"
