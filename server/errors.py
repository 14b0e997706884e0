"""The HTTP service's own errors, and the one mapping from any project error to an HTTP status.

Every answer that is not a success carries the same JSON body: `code`, `message`, `detail`, `hint`. Bad input
is always a 4xx; a 500 means a bug in robopt, never a bad request.
"""

from __future__ import annotations

from tools.errors import (
    ChildCancelledError,
    ConfigurationError,
    IntegrityError,
    NotFoundError,
    ResourceError,
    RoboptError,
    ValidationError,
)


class UnauthorizedError(RoboptError):
    """The request has no valid bearer API key."""

    code = "unauthorized"
    exit_code = 2


class ConflictError(RoboptError):
    """The request is valid but the resource's state does not allow it (cancel a finished job, ...)."""

    code = "conflict"
    exit_code = 2


class UploadTooLargeError(ResourceError):
    """An upload passed the service's size limit; what was received is deleted."""

    code = "upload_too_large"


class ServiceBusyError(ResourceError):
    """The service cannot take the job now: not enough free memory, or the queue is full."""

    code = "service_busy"


class GoalUnclearError(ValidationError):
    """The goal needs an answer before a job can start; the message is the question."""

    code = "goal_unclear"


class InsecureBindError(ConfigurationError):
    """The service would listen on a non-loopback address without an API key."""

    code = "insecure_bind"


def http_status(error: RoboptError) -> int:
    """The HTTP status for a project error: 4xx for anything the client can fix, 503 for capacity."""
    if isinstance(error, UnauthorizedError):
        return 401
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, UploadTooLargeError):
        return 413
    if isinstance(error, InsecureBindError):
        return 403
    if isinstance(error, (ConflictError, IntegrityError, ChildCancelledError)):
        return 409
    if isinstance(error, ServiceBusyError):
        return 503
    if isinstance(error, ValidationError):
        return 422
    if isinstance(error, ResourceError):
        return (
            422  # a limit of the input (archive too big, a model that ran past its time): the client's to fix
        )
    return 500
