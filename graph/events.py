"""One event schema for everything a job reports: progress, status, attempt, checkpoint, error, complete.

Nodes emit `(type, data)` through LangGraph's stream writer (`emit`); the runner stamps each with the job id,
a per-job sequence number and the time, then fans it out to subscribers (CLI display, history DB, SSE,
WebSocket).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["progress", "status", "attempt", "checkpoint", "error", "complete"]
EVENT_TYPES: tuple[str, ...] = ("progress", "status", "attempt", "checkpoint", "error", "complete")


class Event(BaseModel):
    """A job event: type, job id, sequence number (from 1, per job), UTC time and data."""

    model_config = ConfigDict(frozen=True)

    type: EventType
    job_id: str
    seq: int = Field(ge=1)
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    data: dict[str, Any] = Field(default_factory=dict)


Writer = Callable[[Any], None]


def emit(writer: Writer | None, type: EventType, **data: Any) -> None:
    """Send one event from a node through the stream writer (a no-op outside a streamed run)."""
    if writer is not None:
        writer({"type": type, "data": data})


def progress(writer: Writer | None, step: str, percent: float, message: str, **data: Any) -> None:
    """Emit a progress event of a long step (0-100)."""
    emit(writer, "progress", step=step, percent=round(float(percent), 1), message=message, **data)
