"""Pure edge functions: each reads the state and names the next node; a state they cannot route is a bug."""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END

from graph.state import JobState


def after_intake(state: JobState) -> Literal["analyze", "__end__"]:
    """A question back to the user ends the run (status needs_input); otherwise analyze."""
    goal = state.get("goal")
    if goal is None:
        raise ValueError("intake produced no goal")
    return END if goal.question else "analyze"


def after_plan(state: JobState) -> Literal["optimize", "finalize"]:
    """Apply the plan, or finalize when the planner (or the budget) says finish."""
    plan = state.get("plan")
    if plan is None:
        raise ValueError("plan produced no decision")
    return "optimize" if plan.action == "apply" else "finalize"


def after_optimize(state: JobState) -> Literal["evaluate", "rollback"]:
    """Evaluate what was stored; a failed attempt rolls back."""
    candidate = state.get("candidate")
    return "evaluate" if candidate is not None and candidate.ref is not None else "rollback"


def after_evaluate(state: JobState) -> Literal["plan", "rollback"]:
    """An accepted attempt plans the next one; a rejected or failed one rolls back first."""
    attempts = state.get("attempts", [])
    if not attempts:
        raise ValueError("evaluate recorded no attempt")
    return "plan" if attempts[-1].status == "accepted" else "rollback"
