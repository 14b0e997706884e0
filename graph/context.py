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
    time_s: float | None = None,
) -> Any:
    """Run a `graph.work` function in a child process with the job's limits, forwarding its progress.

    `time_s` replaces the attempt's time limit for this child (`step_time_s`: what is left of the job's)."""
    options = state["options"]
    loop = asyncio.get_running_loop()

    def forward(percent: float, message: str) -> None:
        loop.call_soon_threadsafe(progress, writer, step, percent, message)

    limits = Limits(
        time_s=time_s or options.attempt_time_s,
        memory_mb=options.attempt_memory_mb,
        threads=options.latency_threads,
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


STEP_FLOOR_S = 30.0
"""The least time a step's child gets, however little of the job's budget is left: a step that starts is given
the time to load and report, and the job overruns its budget by at most this much."""


def step_time_s(state: JobState) -> float:
    """Time limit of an attempt's child (apply or measure): the attempt's limit, cut to what is left of the
    job's budget (at least `STEP_FLOOR_S`). A default-size DDPM policy's job began measuring a version with
    under 2 minutes left and ran minutes past its budget; now the step ends and the job finalizes."""
    options = state["options"]
    return min(options.attempt_time_s, max(STEP_FLOOR_S, seconds_left(state)))


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
