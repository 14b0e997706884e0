"""The memory budget a model file may claim: declared sizes are checked against it before anything is allocated."""

from __future__ import annotations

import psutil

from tools.errors import CorruptFileError

BUDGET_FRACTION = 0.5  # of the memory available now: leave room for the session, the copy and the profiler


def memory_budget_bytes() -> int:
    """Bytes a single loaded model (weights or one sample input) may take on this machine right now."""
    return int(psutil.virtual_memory().available * BUDGET_FRACTION)


def check_within_budget(file_name: str, what: str, declared_bytes: int, hint: str | None = None) -> None:
    """Refuse a file that declares `what` of `declared_bytes` when that is more than the memory budget."""
    budget = memory_budget_bytes()
    if declared_bytes > budget:
        raise CorruptFileError(
            f"{file_name} declares {what} of {declared_bytes:,} bytes, more than the memory budget of "
            f"{budget:,} bytes (half the memory available)",
            hint=hint or "the file is forged or too large for this machine",
        )
