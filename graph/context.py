"""Run-scoped services the nodes use (LangGraph `context`): never checkpointed, given again on resume."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph.events import Writer, progress
from graph.state import JobState
from tools.isolation import Limits, run_isolated_async


@dataclass(frozen=True)
class GraphContext:
    """Where the job's data lives and how its work runs."""

    data_dir: Path


async def run_work(
    context: GraphContext,
    writer: Writer | None,
    state: JobState,
    step: str,
    target: str,
    kwargs: dict[str, Any],
) -> Any:
    """Run a `graph.work` function in a child process with the job's limits, forwarding its progress."""
    options = state["options"]
    loop = asyncio.get_running_loop()

    def forward(percent: float, message: str) -> None:
        loop.call_soon_threadsafe(progress, writer, step, percent, message)

    limits = Limits(
        time_s=options.attempt_time_s, memory_mb=options.attempt_memory_mb, threads=options.latency_threads
    )
    return await run_isolated_async(
        f"graph.work:{target}",
        {"data_dir": str(context.data_dir), **kwargs},
        limits=limits,
        on_progress=forward,
        job_id=state["job_id"],
        scratch_dir=context.data_dir / "work",
    )


def seconds_left(state: JobState) -> float:
    """Wall time left in the job's budget."""
    return state["options"].time_budget_s - (time.time() - state["started_at"])


def attempts_left(state: JobState) -> int:
    """Attempts left in the job's budget."""
    return state["options"].max_attempts - len(state.get("attempts", []))


def report_targets(state: JobState) -> list[str]:
    """Targets to measure and report on: the goal's, the job's --target, this machine."""
    goal = state.get("goal")
    names = list(goal.targets) if goal else []
    if goal is not None:
        names.append(goal.criteria.latency_target)
    if state["options"].target:
        names.append(state["options"].target)
    return list(dict.fromkeys(names))
