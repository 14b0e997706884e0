"""The project's exceptions: each has a stable code, a one-line message and an actionable hint.

Every layer raises these (never bare asserts for user input) so that the CLI can exit 2 with one line and the
server can answer a structured 4xx. Codes are stable strings: clients may match on them.
"""

from __future__ import annotations

from typing import Any


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (libraries' messages span many lines), or its type when empty."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class RoboptError(Exception):
    """Base of every error robopt raises on purpose."""

    code: str = "robopt_error"
    exit_code: int = 1

    def __init__(
        self, message: str, *, hint: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = dict(detail or {})

    def __str__(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")

    def one_line(self) -> str:
        """Render as the single line shown to users: code, message and, when known, what to do."""
        text = f"[{self.code}] {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text.replace("\n", " ")

    def to_dict(self) -> dict[str, Any]:
        """Serialize for JSON answers (API errors, `--json` output, events)."""
        return {"code": self.code, "message": self.message, "hint": self.hint, "detail": self.detail}


class ValidationError(RoboptError):
    """The user's input (a file, a flag, a config) is invalid; nothing was done with it."""

    code = "validation_error"
    exit_code = 2


class UnsupportedFormatError(ValidationError):
    """The file is not a model format robopt recognizes, or the format needs an extra that is missing."""

    code = "unsupported_format"


class CorruptFileError(ValidationError):
    """The file claims a known format but its content is broken (truncated, inconsistent header, ...)."""

    code = "corrupt_file"


class UnsafeFileError(ValidationError):
    """Loading the file would run code or escape the data directory; refused unless explicitly trusted."""

    code = "unsafe_file"


class MissingDependencyError(ValidationError):
    """An optional package needed for this input or technique is not installed."""

    code = "missing_dependency"


class InputSpecError(ValidationError):
    """The model's input specification is missing, malformed or inconsistent with the model."""

    code = "input_spec_error"


class ConfigurationError(ValidationError):
    """Settings or configuration files are invalid."""

    code = "configuration_error"


class NotFoundError(ValidationError):
    """A model, job or version that was asked for does not exist."""

    code = "not_found"


class IntegrityError(RoboptError):
    """A stored artifact no longer matches its recorded hash, or the store refused to overwrite it."""

    code = "integrity_error"
    exit_code = 2


class ResourceError(RoboptError):
    """A limit was reached: memory, disk, time, or a cap on an archive's size or file count."""

    code = "resource_error"
    exit_code = 2


class OptimizationError(RoboptError):
    """A technique could not be applied to this model (unsupported layer, failed export, ...)."""

    code = "optimization_error"


class NotApplicableError(OptimizationError):
    """The technique finds nothing in this model to work on (no transformer blocks, no layer that qualifies).

    Not a failure of the technique: the planner should choose another one for this model.
    """

    code = "not_applicable"


class MeasurementError(RoboptError):
    """A measurement (latency, memory, accuracy) could not be taken."""

    code = "measurement_error"


class ChildCrashedError(OptimizationError):
    """The child process died without answering: killed by a signal (segfault, OOM killer) or exited early."""

    code = "child_crashed"


class ChildTimeoutError(ResourceError):
    """The child ran past its time limit and was killed with its process group."""

    code = "child_timeout"


class ChildMemoryError(ResourceError):
    """The child's resident memory passed its limit and it was killed with its process group."""

    code = "child_memory"


class ChildCancelledError(RoboptError):
    """The caller cancelled the call; the child was killed with its process group."""

    code = "child_cancelled"
