"""The service's pure rules: which status each project error becomes, what counts as loopback, the bind check,
and memory admission's estimate."""

from __future__ import annotations

import pytest

from agents.intake import ModelFacts
from server.deps import is_loopback
from server.errors import (
    ConflictError,
    GoalUnclearError,
    InsecureBindError,
    ServiceBusyError,
    UnauthorizedError,
    UploadTooLargeError,
    http_status,
)
from server.main import check_bind
from server.scheduler import CHILD_BASE_MB, estimate_job_mb
from server.settings import load_settings
from tools.errors import (
    ChildCrashedError,
    ChildTimeoutError,
    CorruptFileError,
    NotFoundError,
    OptimizationError,
    UnsafeFileError,
    ValidationError,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnauthorizedError("no key"), 401),
        (NotFoundError("no job"), 404),
        (UploadTooLargeError("big"), 413),
        (ConflictError("ended"), 409),
        (ServiceBusyError("full"), 503),
        (GoalUnclearError("which?"), 422),
        (CorruptFileError("broken"), 422),
        (UnsafeFileError("pickle"), 422),
        (ValidationError("bad"), 422),
        (ChildTimeoutError("slow"), 422),
        (InsecureBindError("open"), 403),
        (OptimizationError("bug"), 500),
        (ChildCrashedError("segfault"), 500),
    ],
)
def test_each_project_error_has_its_http_status(error: Exception, status: int) -> None:
    assert http_status(error) == status


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_this_machine_needs_a_key() -> None:
    check_bind("127.0.0.1", load_settings())
    with pytest.raises(InsecureBindError, match="without an API key"):
        check_bind("0.0.0.0", load_settings())
    check_bind("0.0.0.0", load_settings(api_key="k"))


def test_the_memory_estimate_grows_with_the_artifact() -> None:
    small = estimate_job_mb(ModelFacts(artifact_bytes=1024**2))
    large = estimate_job_mb(ModelFacts(artifact_bytes=1024**3))
    assert CHILD_BASE_MB < small < large
    assert large - small == pytest.approx(4 * (1024 - 1))
    assert estimate_job_mb(ModelFacts(params=1_000_000)) == pytest.approx(CHILD_BASE_MB + 4 * 4e6 / 1024**2)
