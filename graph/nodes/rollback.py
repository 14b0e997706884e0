"""rollback: a rejected or failed attempt leaves the current version at the last accepted one; nothing is deleted."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import GraphContext
from graph.events import emit
from graph.state import JobState


async def rollback(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Record the rollback from the rejected candidate to the last accepted version and clear the candidate."""
    current, attempts = state["current"], state.get("attempts", [])
    last = attempts[-1] if attempts else None
    rejected = last.version.version_id if last and last.version else None
    to_version = current.ref.version_id if current else None
    reason = last.reason if last else "no attempt"
    emit(
        runtime.stream_writer,
        "status",
        state="rolled_back",
        attempt=last.index if last else None,
        from_version=rejected,
        to_version=to_version,
        reason=reason,
    )
    note = (
        f"attempt {last.index if last else '?'} {last.status if last else ''}: back to version {to_version}"
    )
    return {"candidate": None, "last_node": "rollback", "notes": [note]}
