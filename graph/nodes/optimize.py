"""optimize: run the planned chain of techniques in a child process and store every version it makes."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from graph.context import GraphContext, run_work, step_time_s
from graph.events import Writer, emit
from graph.state import Attempt, Candidate, JobState
from tools.errors import RoboptError


async def optimize(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Apply the plan to the current version; a failure (error, crash, timeout, OOM) becomes a failed attempt."""
    writer = runtime.stream_writer
    plan, current = state["plan"], state["current"]
    if plan is None or current is None or not plan.steps:
        raise RuntimeError("optimize reached without a plan to apply")
    planned = planned_attempt(state)
    steps, index = planned["steps"], planned["index"]
    names = "+".join(step.technique for step in plan.steps)
    emit(writer, "status", state="node", node="optimize", attempt=index, message=f"applying {names}")
    started = time.monotonic()
    try:
        result = await run_work(
            runtime.context,
            writer,
            state,
            "optimize",
            "apply_chain",
            {
                "job_id": state["job_id"],
                "source": current.ref,
                "steps": steps,
                "data": state["options"].data,
                "time_budget_s": max(10.0, step_time_s(state) - 10.0),
            },
            time_s=step_time_s(state),
        )
    except RoboptError as error:
        duration = time.monotonic() - started
        attempt = Attempt(
            **planned_attempt(state), status="failed", reason=error.one_line(), duration_s=duration
        )
        report_failure(writer, "optimize", attempt, error)
        return {
            "candidate": Candidate(error=error.to_dict(), duration_s=duration),
            "attempts": [attempt],
            "last_node": "optimize",
        }
    candidate = Candidate(
        ref=result["ref"],
        versions=result["versions"],
        facts=result["facts"],
        duration_s=time.monotonic() - started,
    )
    emit(writer, "status", state="optimized", versions=candidate.versions, technique=names)
    return {"candidate": candidate, "last_node": "optimize"}


def planned_attempt(state: JobState) -> dict[str, Any]:
    """The fields every record of the next attempt shares: its index, what was planned, by whom, from where."""
    plan, current = state["plan"], state["current"]
    return {
        "index": len(state.get("attempts", [])) + 1,
        "parent_version": current.ref.version_id if current else "",
        "steps": [step.config_json() for step in plan.steps] if plan else [],
        "rationale": plan.rationale if plan else "",
        "planned_by": state.get("planned_by", "rules"),
    }


def report_failure(writer: Writer | None, node: str, attempt: Attempt, error: RoboptError) -> None:
    """Emit the error and the failed attempt."""
    emit(writer, "error", node=node, attempt=attempt.index, **error.to_dict())
    emit(writer, "attempt", **attempt_event(attempt))


def attempt_event(attempt: Attempt) -> dict[str, Any]:
    """The attempt as an event's data: what ran, what became of it, the headline figures."""
    data: dict[str, Any] = {
        "index": attempt.index,
        "technique": attempt.technique,
        "steps": attempt.steps,
        "status": attempt.status,
        "reason": attempt.reason,
        "parent_version": attempt.parent_version,
        "version": attempt.version.version_id if attempt.version else None,
        "duration_s": round(attempt.duration_s, 2),
        "planned_by": attempt.planned_by,
        "judged_by": attempt.judged_by,
    }
    m = attempt.measurement
    if m is not None:
        data["p50_ms"] = m.runtime.p50_ms if m.runtime else None
        data["size_mb"] = m.size.artifact_mb if m.size else None
        data["accuracy"] = m.accuracy.model_dump(mode="json") if m.accuracy else None
    return data
