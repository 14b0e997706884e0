"""Before/after comparison of two measurements, and the Pareto front of many (accuracy, latency, size).

Every ratio is baseline / candidate, so above 1 means the candidate is better (faster, smaller). Accuracy
changes are candidate - baseline in the metric's units; `improved` follows the metric's direction.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ValidationError
from tools.evaluation.measurement import Measurement, matching_accuracy
from tools.evaluation.types import AccuracyLevel

_MB = 1024 * 1024
Objective = Literal["accuracy", "latency", "size"]


class AccuracyChange(BaseModel):
    """Baseline and candidate accuracy at one level and metric, with the change."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="AccuracyResult.label: never calls fidelity 'accuracy'.")
    level: AccuracyLevel
    metric: str
    higher_is_better: bool
    before: float
    after: float
    change: float = Field(description="after - before, in the metric's units.")
    relative_pct: float | None = Field(description="change / |before| x 100; None when before is 0.")
    improved: bool = Field(description="The change goes the metric's good way (or is zero).")


class Comparison(BaseModel):
    """Before/after figures of a candidate against the baseline."""

    model_config = ConfigDict(frozen=True)

    baseline_version: str
    candidate_version: str
    accuracy: AccuracyChange | None = None
    size_mb_before: float | None = None
    size_mb_after: float | None = None
    compression: float | None = Field(default=None, description="Artifact bytes before / after.")
    params_before: int | None = None
    params_after: int | None = None
    latency_ms_before: float | None = Field(default=None, description="p50 measured here.")
    latency_ms_after: float | None = None
    speedup: float | None = Field(default=None, description="p50 before / after.")
    per_sample_ms_before: float | None = Field(default=None, description="p50 / batch.")
    per_sample_ms_after: float | None = None
    peak_memory_mb_before: float | None = None
    peak_memory_mb_after: float | None = None


def _ratio(before: float | None, after: float | None) -> float | None:
    """Return before / after, or None when either is missing or after is 0."""
    return before / after if before is not None and after else None


def compare(
    baseline: Measurement,
    candidate: Measurement,
    *,
    level: AccuracyLevel | None = None,
    metric: str | None = None,
) -> Comparison:
    """Compare `candidate` with `baseline`: accuracy change, compression, speedup, per-sample time, memory."""
    accuracy = None
    pair = matching_accuracy(baseline, candidate, level, metric)
    if pair is not None:
        before, after = pair
        change = after.value - before.value
        accuracy = AccuracyChange(
            label=after.label,
            level=after.level,
            metric=after.metric,
            higher_is_better=after.higher_is_better,
            before=before.value,
            after=after.value,
            change=change,
            relative_pct=change / abs(before.value) * 100 if before.value else None,
            improved=change >= 0 if after.higher_is_better else change <= 0,
        )
    size_before = baseline.size.artifact_bytes if baseline.size else None
    size_after = candidate.size.artifact_bytes if candidate.size else None
    run_before, run_after = baseline.runtime, candidate.runtime
    return Comparison(
        baseline_version=baseline.version_id,
        candidate_version=candidate.version_id,
        accuracy=accuracy,
        size_mb_before=size_before / _MB if size_before is not None else None,
        size_mb_after=size_after / _MB if size_after is not None else None,
        compression=_ratio(size_before, size_after),
        params_before=baseline.size.total_params if baseline.size else None,
        params_after=candidate.size.total_params if candidate.size else None,
        latency_ms_before=run_before.p50_ms if run_before else None,
        latency_ms_after=run_after.p50_ms if run_after else None,
        speedup=_ratio(run_before.p50_ms if run_before else None, run_after.p50_ms if run_after else None),
        per_sample_ms_before=run_before.per_sample_ms if run_before else None,
        per_sample_ms_after=run_after.per_sample_ms if run_after else None,
        peak_memory_mb_before=baseline.peak_memory_mb,
        peak_memory_mb_after=candidate.peak_memory_mb,
    )


class ParetoResult(BaseModel):
    """The non-dominated versions over the objectives that every compared version has."""

    model_config = ConfigDict(frozen=True)

    objectives: list[Objective] = Field(description="Objectives used (present on every compared version).")
    front: list[str] = Field(description="Version ids on the front, in input order.")
    dominated_by: dict[str, str] = Field(
        default_factory=dict, description="Each dominated version -> one version that dominates it."
    )
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Versions left out -> why (a figure the others have is missing)."
    )


def _objective_values(measurement: Measurement, metric: tuple[str, str] | None) -> dict[Objective, float]:
    """Return the objectives this measurement has, each oriented so that lower is better."""
    values: dict[Objective, float] = {}
    if metric is not None:
        result = measurement.accuracy_for(metric[0], metric[1])  # type: ignore[arg-type]
        if result is not None:
            values["accuracy"] = -result.value if result.higher_is_better else result.value
    if measurement.runtime is not None:
        values["latency"] = measurement.runtime.p50_ms
    if measurement.size is not None and measurement.size.artifact_bytes is not None:
        values["size"] = float(measurement.size.artifact_bytes)
    return values


def pareto_front(
    measurements: Sequence[Measurement],
    objectives: Sequence[Objective] = ("accuracy", "latency", "size"),
    *,
    level: AccuracyLevel | None = None,
    metric: str | None = None,
) -> ParetoResult:
    """Return the versions no other version beats on every objective (and strictly on one).

    Accuracy is compared at one level and metric (the first measurement's headline figure unless named),
    in its own direction. An objective missing on every version is dropped; a version missing an objective
    that others have is skipped, with the reason.
    """
    if not measurements:
        return ParetoResult(objectives=[], front=[])
    ids = [m.version_id for m in measurements]
    if len(set(ids)) != len(ids):
        raise ValidationError("pareto_front needs distinct version ids", detail={"versions": ids})
    chosen = None
    if "accuracy" in objectives:
        for measurement in measurements:
            found = measurement.accuracy_for(level, metric)
            if found is not None:
                chosen = (found.level, found.metric)
                directions = {
                    r.higher_is_better for m in measurements if (r := m.accuracy_for(*chosen)) is not None
                }
                if len(directions) > 1:
                    raise ValidationError(f"versions disagree on the direction of {found.label}")
                break
    table = {m.version_id: _objective_values(m, chosen) for m in measurements}
    used: list[Objective] = [o for o in objectives if any(o in v for v in table.values())]
    skipped = {
        vid: "missing " + ", ".join(o for o in used if o not in values)
        for vid, values in table.items()
        if any(o not in values for o in used)
    }
    points = {vid: [values[o] for o in used] for vid, values in table.items() if vid not in skipped}
    front: list[str] = []
    dominated_by: dict[str, str] = {}
    for vid, point in points.items():
        for other, rival in points.items():
            if other != vid and _dominates(rival, point):
                dominated_by[vid] = other
                break
        else:
            front.append(vid)
    return ParetoResult(objectives=used, front=front, dominated_by=dominated_by, skipped=skipped)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` on every objective and better on one (lower is better)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
