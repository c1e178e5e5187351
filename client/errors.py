"""The SDK's exceptions: one per gRPC status a caller may want to handle, each keeping the status code."""

from contextlib import contextmanager

import grpc


class ImgsimError(Exception):
    """A failed call. `code` is the grpc.StatusCode the service answered with."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN):
        super().__init__(message)
        self.code = code


class InvalidArgument(ImgsimError, ValueError):
    """The request was malformed: not an image, a wrong dimension, k out of range..."""


class ModelMismatch(ImgsimError):
    """The collection holds vectors of another model, or cannot be written (FAILED_PRECONDITION)."""


class NotFound(ImgsimError):
    """No such collection."""


class AlreadyExists(ImgsimError):
    """A collection of that name exists already."""


class Overloaded(ImgsimError):
    """The service is saturated, or its storage full (RESOURCE_EXHAUSTED); retry after a short wait."""


class Unavailable(ImgsimError):
    """The service cannot be reached, is starting, or is draining (UNAVAILABLE)."""


class DeadlineExceeded(ImgsimError):
    """The call's deadline passed."""


class Unauthenticated(ImgsimError):
    """The call carried no valid credentials."""


class DataLoss(ImgsimError):
    """Stored data failed its checksum."""


EXCEPTIONS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: ModelMismatch,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


@contextmanager
def translated_errors(service: str):
    """Re-raises grpc.RpcError as the SDK's exception for its status code, naming the service."""
    try:
        yield
    except grpc.RpcError as err:
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        raise EXCEPTIONS.get(code, ImgsimError)(f"{service}: {code.name}: {details}", code) from err
