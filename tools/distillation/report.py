"""What a distillation run reports: held-out fidelity and task loss before and after, and how it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class HeldOutMetrics:
    """How a student matches the teacher (and the labels, when given) on held-out calibration data."""

    fidelity_cosine: float
    output_mse: float
    task_loss: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Return the metrics as JSON-ready values."""
        return {
            "fidelity_cosine": self.fidelity_cosine,
            "output_mse": self.output_mse,
            "task_loss": self.task_loss,
        }


@dataclass(frozen=True)
class DistillationReport:
    """What a distillation run did: held-out metrics before and after, steps run and why it stopped.

    `heldout_separate` is False when the data held a single batch, so the held-out split is the training data.
    `trained` holds the held-out metrics right after training; `after` those of the student returned, which is
    the trained one unless training made it worse on held-out data (`kept` "before": its weights are restored).
    """

    before: HeldOutMetrics
    after: HeldOutMetrics
    teacher_task_loss: float | None
    task_metric: Literal["mse", "cross_entropy"] | None
    output_losses: tuple[str, ...]
    steps_run: int
    steps_planned: int
    stopped_by: Literal["steps", "time"]
    seconds: float
    first_loss: float | None
    final_loss: float | None
    train_samples: int
    heldout_samples: int
    feature_pairs: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    heldout_separate: bool = True
    trained: HeldOutMetrics | None = None
    kept: Literal["trained", "before"] = "trained"

    @property
    def fidelity_recovered(self) -> float | None:
        """Share of the cosine gap to the teacher closed: (after - before) / (1 - before)."""
        gap = 1.0 - self.before.fidelity_cosine
        return None if gap <= 1e-12 else (self.after.fidelity_cosine - self.before.fidelity_cosine) / gap

    @property
    def output_mse_ratio(self) -> float | None:
        """Output MSE against the teacher after distillation divided by before."""
        return None if self.before.output_mse <= 0 else self.after.output_mse / self.before.output_mse

    @property
    def task_gap_recovered(self) -> float | None:
        """Share of the task-loss gap to the teacher closed: (before - after) / (before - teacher)."""
        if self.before.task_loss is None or self.after.task_loss is None or self.teacher_task_loss is None:
            return None
        gap = self.before.task_loss - self.teacher_task_loss
        return None if gap <= 0 else (self.before.task_loss - self.after.task_loss) / gap

    def as_facts(self) -> dict[str, Any]:
        """Return the report as JSON-ready facts for a version's manifest."""
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "teacher_task_loss": self.teacher_task_loss,
            "task_metric": self.task_metric,
            "fidelity_recovered": self.fidelity_recovered,
            "output_mse_ratio": self.output_mse_ratio,
            "task_gap_recovered": self.task_gap_recovered,
            "output_losses": list(self.output_losses),
            "feature_pairs": [list(pair) for pair in self.feature_pairs],
            "steps_run": self.steps_run,
            "steps_planned": self.steps_planned,
            "stopped_by": self.stopped_by,
            "seconds": round(self.seconds, 3),
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "train_samples": self.train_samples,
            "heldout_samples": self.heldout_samples,
            "heldout_separate": self.heldout_separate,
            "trained": self.trained.as_dict() if self.trained is not None else None,
            "kept": self.kept,
        }
