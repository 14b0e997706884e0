"""evaluate: measure the candidate in a child process, apply the hard guards, and ask for the verdict.

Once a version meets every criterion (and the goal searches on), the child is told the best such version: a
candidate whose size and latency, measured first, show it cannot beat it on the goal's priority is not run for
accuracy, and is rejected here by that rule alone, without asking the reasoner."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from langgraph.runtime import Runtime

from agents.base import Reasoner
from agents.evaluation import EVALUATION, VerdictInput, best_to_beat, guards
from graph.context import GraphContext, report_targets, run_work, step_time_s
from graph.events import emit
from graph.nodes.intake import decision_note
from graph.nodes.optimize import attempt_event, planned_attempt, report_failure
from graph.search import best_passing
from graph.state import Attempt, JobState, VersionPoint
from tools.errors import RoboptError
from tools.evaluation.criteria import check_criteria
from tools.evaluation.measurement import Measurement


def make_evaluate_node(
    reasoner: Reasoner,
) -> Callable[[JobState, Runtime[GraphContext]], Awaitable[dict[str, Any]]]:
    """Build the evaluate node around the injected reasoner."""

    async def evaluate(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        """Accept the candidate (it becomes current) or reject it (rollback follows); a crash fails it."""
        writer = runtime.stream_writer
        goal, current, baseline = state["goal"], state["current"], state["baseline"]
        candidate = state["candidate"]
        if goal is None or current is None or baseline is None or candidate is None or candidate.ref is None:
            raise RuntimeError("evaluate reached without a candidate")
        options = state["options"]
        common = {**planned_attempt(state), "versions": candidate.versions, "version": candidate.ref}
        index, steps = common["index"], common["steps"]
        emit(
            writer,
            "status",
            state="node",
            node="evaluate",
            attempt=index,
            message=f"measuring version {candidate.ref.version_id}",
        )
        started = time.monotonic()
        time_s = step_time_s(state)
        best = best_passing(state)
        # the improvement phase: a candidate that cannot beat the best passing version is not run for accuracy
        must_beat = (
            best_to_beat(goal, best.measurement) if best is not None and not goal.stop_at_first else None
        )
        try:
            measurement: Measurement = await run_work(
                runtime.context,
                writer,
                state,
                "evaluate",
                "measure",
                {
                    "ref": candidate.ref,
                    "original": state["original"],
                    "plan": options.accuracy,
                    "data": options.data,
                    "targets": report_targets(state),
                    "threads": options.latency_threads,
                    "iterations": options.latency_iterations,
                    "time_limit_s": time_s,
                    "must_beat": must_beat,
                },
                time_s=time_s,
            )
        except RoboptError as error:
            attempt = Attempt(
                **common,
                status="failed",
                reason=f"measuring failed: {error.one_line()}",
                duration_s=candidate.duration_s + time.monotonic() - started,
            )
            report_failure(writer, "evaluate", attempt, error)
            return {"attempts": [attempt], "last_node": "evaluate"}
        check = check_criteria(goal.criteria, baseline, measurement)
        if measurement.accuracy_skipped is not None:
            attempt = Attempt(
                **common,
                status="rejected",
                reason=f"beats_best: {measurement.accuracy_skipped}",
                measurement=measurement,
                check=check,
                judged_by="rules",
                duration_s=candidate.duration_s + time.monotonic() - started,
            )
            emit(writer, "attempt", **attempt_event(attempt))
            return {"attempts": [attempt], "last_node": "evaluate"}
        parent_check = check_criteria(goal.criteria, baseline, current.measurement)
        payload = VerdictInput(
            goal=goal,
            steps=[str(s["type"]) for s in steps],
            baseline=baseline,
            parent=current.measurement,
            candidate=measurement,
            check=check,
            parent_check=parent_check,
            best=best.measurement if best is not None else None,
            guards=guards(
                goal,
                current.measurement,
                measurement,
                check,
                parent_check,
                best=best.measurement if best is not None else None,
            ),
        )
        decision = await reasoner.decide(EVALUATION, payload)
        verdict = decision.output
        attempt = Attempt(
            **common,
            status="accepted" if verdict.accept else "rejected",
            reason=verdict.reason,
            measurement=measurement,
            check=check,
            judged_by=decision.source,
            duration_s=candidate.duration_s + time.monotonic() - started,
        )
        emit(writer, "attempt", **attempt_event(attempt))
        update: dict[str, Any] = {
            "attempts": [attempt],
            "last_node": "evaluate",
            "notes": decision_note(writer, "evaluation", decision),
        }
        if verdict.accept:
            lineage = current.lineage + [str(s["type"]) for s in steps]
            update["current"] = VersionPoint(ref=candidate.ref, measurement=measurement, lineage=lineage)
            update["candidate"] = None
        return update

    return evaluate
