"""Result types shared by the evaluation modules, the criteria check and the reports."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AccuracyLevel = Literal["fidelity", "task", "closed_loop", "closed_loop_agreement"]
"""Which kind of accuracy a number is: agreement with the original model (no data), a task metric on
labelled data, the success rate of closed-loop rollouts in a simulator, or the agreement of the candidate's
actions and trajectories with the original's in closed loop (same seeded episodes). A fidelity number is
never called accuracy."""

ACTION_ERROR_METRIC = "action_rel_error"
"""A policy's fidelity headline: ||a_candidate - a_original|| / ||a_original|| over all whole action chunks."""
RELATIVE_ERROR_METRICS = frozenset({ACTION_ERROR_METRIC})
"""Fidelity metrics that are already an error relative to the original's outputs (0 for the original itself)."""


class AccuracyResult(BaseModel):
    """One accuracy figure, always stating its level, metric, direction and (when sampled) its 95% interval."""

    model_config = ConfigDict(frozen=True)

    level: AccuracyLevel
    metric: str = Field(description="e.g. 'cosine', 'action_mse', 'success_rate'.")
    value: float
    higher_is_better: bool
    ci_low: float | None = Field(default=None, description="Lower bound of the 95% interval, when sampled.")
    ci_high: float | None = Field(default=None, description="Upper bound of the 95% interval, when sampled.")
    samples: int = Field(default=0, ge=0, description="Inputs, labelled samples or episodes it is based on.")
    details: dict[str, Any] = Field(default_factory=dict, description="Per-output or per-metric breakdown.")

    @property
    def label(self) -> str:
        """A human label that never calls fidelity 'accuracy'."""
        names = {
            "fidelity": "fidelity to the original",
            "task": "task metric",
            "closed_loop": "closed-loop",
            "closed_loop_agreement": "closed-loop agreement",
        }
        space = " in action space" if self.metric in RELATIVE_ERROR_METRICS else ""
        return f"{names[self.level]}{space} {self.metric}"
