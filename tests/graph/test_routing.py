"""The edge functions route on the state alone and refuse states they cannot route."""

from __future__ import annotations

import pytest

from agents.intake import GoalSpec
from agents.planning import PlannedTechnique, PlanStep
from graph.routing import after_evaluate, after_intake, after_optimize, after_plan
from graph.state import Attempt, Candidate
from tools.versions import ArtifactRef


def _ref() -> ArtifactRef:
    return ArtifactRef(job_id="j", version_id="v0002", path="/x/model.onnx", sha256="0" * 64, format="onnx")


def _attempt(status: str) -> Attempt:
    return Attempt(
        index=1, parent_version="v0001", steps=[{"type": "onnx_export"}], status=status, reason="r"
    )


def test_intake_ends_the_run_on_a_question() -> None:
    assert after_intake({"goal": GoalSpec(question="which target?")}) == "__end__"
    assert after_intake({"goal": GoalSpec()}) == "analyze"
    with pytest.raises(ValueError):
        after_intake({})


def test_plan_routes_apply_to_optimize_and_finish_to_finalize() -> None:
    apply = PlanStep(action="apply", steps=[PlannedTechnique(technique="onnx_export")], rationale="r")
    assert after_plan({"plan": apply}) == "optimize"
    assert after_plan({"plan": PlanStep(action="finish", rationale="done")}) == "finalize"


def test_a_failed_optimize_rolls_back() -> None:
    assert after_optimize({"candidate": Candidate(ref=_ref())}) == "evaluate"
    assert after_optimize({"candidate": Candidate(error={"code": "child_crashed"})}) == "rollback"
    assert after_optimize({"candidate": None}) == "rollback"


@pytest.mark.parametrize(
    "status, node", [("accepted", "plan"), ("rejected", "rollback"), ("failed", "rollback")]
)
def test_evaluate_routes_on_the_last_attempt(status: str, node: str) -> None:
    assert after_evaluate({"attempts": [_attempt("accepted"), _attempt(status)]}) == node
