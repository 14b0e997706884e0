"""intake: the goal text -> typed criteria (or a question back to the user)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from langgraph.runtime import Runtime

from agents.base import Decision, Reasoner
from agents.intake import INTAKE, AccuracyKind, GoalSpec, IntakeInput
from graph.context import GraphContext
from graph.events import Writer, emit
from graph.state import JobOptions, JobState
from tools.evaluation.evaluate import AccuracyPlan
from tools.evaluation.policy import ACTION_ERROR_METRIC

_TASK_HEADLINE = {
    "actions": ("action_mse", False),
    "tokens": ("token_accuracy", True),
    "classes": ("accuracy", True),
}


def accuracy_kind(plan: AccuracyPlan) -> AccuracyKind:
    """The headline metric the job's accuracy plan produces, and its direction."""
    if plan.level == "closed_loop":
        return AccuracyKind(level="closed_loop", metric="success_rate", higher_is_better=True)
    if plan.level == "closed_loop_agreement":
        return AccuracyKind(level="closed_loop_agreement", metric="action_agreement", higher_is_better=True)
    if plan.level == "fidelity" and plan.judge_actions:
        return AccuracyKind(level="fidelity", metric=ACTION_ERROR_METRIC, higher_is_better=False)
    if plan.level == "fidelity":
        return AccuracyKind(level="fidelity", metric="min_cosine", higher_is_better=True)
    metric, higher = _TASK_HEADLINE[plan.task_kind]
    return AccuracyKind(level="task", metric=metric, higher_is_better=higher)


def decision_note(writer: Writer | None, agent: str, decision: Decision[Any]) -> list[str]:
    """Emit who decided; return a note when the LLM failed and the rules answered instead."""
    emit(
        writer,
        "status",
        state="decided",
        agent=agent,
        source=decision.source,
        reasoner=decision.reasoner,
        fallback_reason=decision.fallback_reason,
    )
    if decision.source == "rules_fallback":
        return [f"{agent}: the LLM failed ({decision.fallback_reason}); the rules decided"]
    return []


def with_job_options(goal: GoalSpec, options: JobOptions) -> GoalSpec:
    """The goal with what the job's options ask beside the text (--stop-at-first, the API's stop_at_first)."""
    if options.stop_at_first and not goal.stop_at_first:
        return goal.model_copy(update={"stop_at_first": True})
    return goal


def make_intake_node(
    reasoner: Reasoner,
) -> Callable[[JobState, Runtime[GraphContext]], Awaitable[dict[str, Any]]]:
    """Build the intake node around the injected reasoner."""

    async def intake(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        """Parse the goal; a question back ends the run with status needs_input."""
        writer = runtime.stream_writer
        options = state["options"]
        emit(writer, "status", state="node", node="intake", message="reading the goal")
        payload = IntakeInput(
            text=state["goal_text"],
            history=list(options.goal_history),
            model=options.model,
            accuracy=accuracy_kind(options.accuracy),
            default_target=options.target,
        )
        decision = await reasoner.decide(INTAKE, payload)
        goal = decision.output
        notes = decision_note(writer, "intake", decision) + [f"assumed: {a}" for a in goal.assumptions]
        if options.stop_at_first and not goal.stop_at_first:
            goal = with_job_options(goal, options)
            notes.append("stopping at the first version that meets every criterion (asked with the job)")
        update: dict[str, Any] = {"goal": goal, "last_node": "intake", "notes": notes}
        if goal.question:
            update["status"] = "needs_input"
            emit(writer, "status", state="needs_input", question=goal.question)
        return update

    return intake
