"""One version's measured figures in one JSON-serializable record, as the graph stores and the reports read.

A Measurement bundles what evaluation found for a version: accuracy (at a stated level), latency and memory
measured here, size, FLOPs and per-target projections. It never holds tensors or modules.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.errors import ValidationError
from tools.evaluation.runners import RuntimeFigures
from tools.evaluation.size import SizeFigures
from tools.evaluation.targets import THIS_MACHINE, ProjectedLatency
from tools.evaluation.types import AccuracyLevel, AccuracyResult


class Measurement(BaseModel):
    """Measured figures of one model version: accuracy, runtime, size, memory and target projections."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    technique: str = Field(description="What produced the version ('intake' for the original).")
    params: dict[str, Any] = Field(default_factory=dict, description="The technique's config, as JSON.")
    accuracy: AccuracyResult | None = Field(default=None, description="The headline accuracy figure.")
    accuracy_skipped: str | None = Field(
        default=None,
        description="Why accuracy was not measured: size and latency, measured first, already showed that the "
        "version cannot beat the best version that meets every criterion (None when it was measured).",
    )
    other_accuracy: list[AccuracyResult] = Field(
        default_factory=list, description="Further accuracy figures (other levels or metrics)."
    )
    runtime: RuntimeFigures | None = Field(default=None, description="Latency and memory measured here.")
    size: SizeFigures | None = None
    flops: int | None = Field(default=None, description="FLOPs of one batch-1 forward pass, when profiled.")
    projections: list[ProjectedLatency] = Field(
        default_factory=list, description="Latency on other targets: estimated; this machine: measured."
    )
    peak_memory_mb: float | None = Field(
        default=None,
        description="Peak memory in MB; defaults to runtime.peak_rss_mb (the measuring process's peak RSS).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_peak_memory(cls, data: Any) -> Any:
        """Take the peak memory from the runtime figures when none is given."""
        if isinstance(data, dict) and data.get("peak_memory_mb") is None and data.get("runtime") is not None:
            runtime = data["runtime"]
            peak = runtime.get("peak_rss_mb") if isinstance(runtime, dict) else runtime.peak_rss_mb
            data = {**data, "peak_memory_mb": peak}
        return data

    def accuracy_for(
        self, level: AccuracyLevel | None = None, metric: str | None = None
    ) -> AccuracyResult | None:
        """Return the first accuracy figure matching `level` and `metric` (None matches any)."""
        for result in ([self.accuracy] if self.accuracy else []) + list(self.other_accuracy):
            if (level is None or result.level == level) and (metric is None or result.metric == metric):
                return result
        return None

    def latency_on(self, target: str) -> tuple[float, bool] | None:
        """Return (p50 latency in ms, estimated) on `target`: measured here, else a stored projection."""
        if target == THIS_MACHINE and self.runtime is not None:
            return self.runtime.p50_ms, False
        for projection in self.projections:
            if projection.target == target:
                return projection.latency_ms, projection.estimated
        return None


def matching_accuracy(
    baseline: Measurement,
    candidate: Measurement,
    level: AccuracyLevel | None = None,
    metric: str | None = None,
) -> tuple[AccuracyResult, AccuracyResult] | None:
    """Return the baseline's and candidate's accuracy at the same level and metric, or None when both lack it.

    Raises ValidationError when only one has it, or when their levels, metrics or directions differ.
    """
    before = baseline.accuracy_for(level, metric)
    after = candidate.accuracy_for(level, metric)
    if before is None and after is None:
        return None
    wanted = f"{level or 'any level'} / {metric or 'any metric'}"
    if before is None or after is None:
        missing = baseline.version_id if before is None else candidate.version_id
        raise ValidationError(
            f"version {missing} has no accuracy figure for {wanted}; both versions need the same one",
            hint="evaluate both versions at the same accuracy level and metric",
        )
    if (before.level, before.metric) != (after.level, after.metric):
        raise ValidationError(
            f"accuracy figures differ: baseline {baseline.version_id} has {before.label}, candidate "
            f"{candidate.version_id} has {after.label}; they cannot be compared",
            hint="name the accuracy level and metric to compare, and measure both versions with it",
        )
    if before.higher_is_better != after.higher_is_better:
        raise ValidationError(f"{before.label}: baseline and candidate disagree on the metric's direction")
    return before, after
