"""The goal's criteria, typed, and their check on a candidate against the baseline, with signed margins.

Margins are positive when there is room left and negative by how much a limit is missed, in the
criterion's unit. A metric that is itself an error relative to the original (a policy's action error) takes a
relative drop as percentage points of it: "actions within 2%" is an action error of at most 0.02. Latency on a target other than this machine comes from a stored projection and is
marked `estimated`. Accuracy drops respect the metric's direction (a higher MSE is a drop).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tools.errors import NotFoundError, ValidationError
from tools.evaluation.measurement import Measurement, matching_accuracy
from tools.evaluation.targets import THIS_MACHINE, canonical_target_name
from tools.evaluation.types import RELATIVE_ERROR_METRICS, AccuracyLevel

_MB = 1024 * 1024


class Criteria(BaseModel):
    """What the optimized model must reach; every field is optional and unset fields are not checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size_mb: float | None = Field(default=None, gt=0, description="Artifact size limit, MiB.")
    max_latency_ms: float | None = Field(
        default=None, gt=0, description="p50 latency limit on latency_target."
    )
    latency_target: str = Field(
        default=THIS_MACHINE, description="Target of the latency limit; not this machine means estimated."
    )
    max_memory_mb: float | None = Field(default=None, gt=0, description="Peak memory limit here, MB.")
    accuracy_floor: float | None = Field(
        default=None,
        description="Absolute limit on the accuracy metric: at least this (at most, for lower-is-better).",
    )
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, description="Tolerated drop from the baseline, in accuracy_drop_unit."
    )
    accuracy_drop_unit: Literal["absolute", "relative_pct"] = Field(
        default="absolute",
        description="'absolute': in the metric's own units (success rate 0-1: 1 point = 0.01); "
        "'relative_pct': percent of the baseline value.",
    )
    accuracy_level: AccuracyLevel | None = Field(
        default=None, description="Accuracy level to judge by; None takes the headline figure."
    )
    accuracy_metric: str | None = Field(default=None, description="Metric to judge by; None takes any.")
    min_speedup: float | None = Field(default=None, gt=0, description="Baseline p50 / candidate p50, here.")
    min_compression: float | None = Field(
        default=None, gt=0, description="Baseline artifact bytes / candidate artifact bytes."
    )

    @field_validator("latency_target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        """Store the target's canonical name, so 'Jetson Orin NX' and 'orin nx' mean the same target."""
        try:
            return canonical_target_name(value)
        except NotFoundError as exc:
            raise ValueError(f"{exc.message} ({exc.hint})") from None

    @model_validator(mode="after")
    def _drop_in_range(self) -> "Criteria":
        """Refuse a relative drop above 100%."""
        if self.accuracy_drop_unit == "relative_pct" and (self.max_accuracy_drop or 0) > 100:
            raise ValueError(
                f"a relative accuracy drop is a percentage (0-100), got {self.max_accuracy_drop}"
            )
        return self


class CriterionResult(BaseModel):
    """One criterion checked: the candidate's value, the limit, the signed margin and whether it passed."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="e.g. 'max_size_mb', 'max_latency_ms', 'max_accuracy_drop'.")
    passed: bool
    value: float | None = Field(description="The candidate's figure; None when it was not measured.")
    limit: float
    margin: float | None = Field(description="Room left in `unit`: positive passes, negative misses by that.")
    unit: str
    estimated: bool = Field(default=False, description="True when the value is a projection.")
    note: str = ""


class CriteriaCheck(BaseModel):
    """All criteria checked for one candidate."""

    model_config = ConfigDict(frozen=True)

    passed: bool = Field(description="Every criterion passed (True when none was set).")
    results: list[CriterionResult]

    @property
    def missing(self) -> list[CriterionResult]:
        """The criteria that were not met."""
        return [r for r in self.results if not r.passed]


def _limit(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    *,
    upper: bool,
    estimated: bool = False,
    note: str = "",
    missing: str = "not measured",
) -> CriterionResult:
    """Check value <= limit (`upper`, margin = limit - value) or value >= limit (margin = value - limit)."""
    if value is None:
        return CriterionResult(
            name=name,
            passed=False,
            value=None,
            limit=limit,
            margin=None,
            unit=unit,
            estimated=estimated,
            note=missing,
        )
    margin = limit - value if upper else value - limit
    return CriterionResult(
        name=name,
        passed=margin >= 0,
        value=value,
        limit=limit,
        margin=margin,
        unit=unit,
        estimated=estimated,
        note=note,
    )


def check_criteria(criteria: Criteria, baseline: Measurement, candidate: Measurement) -> CriteriaCheck:
    """Check every set criterion on `candidate` (relative ones against `baseline`) and return the results."""
    results: list[CriterionResult] = []
    size_before = baseline.size.artifact_bytes if baseline.size else None
    size_after = candidate.size.artifact_bytes if candidate.size else None
    if criteria.max_size_mb is not None:
        value = size_after / _MB if size_after is not None else None
        results.append(_limit("max_size_mb", value, criteria.max_size_mb, "MB", upper=True))
    if criteria.max_latency_ms is not None:
        found = candidate.latency_on(criteria.latency_target)
        value, estimated = found if found else (None, criteria.latency_target != THIS_MACHINE)
        results.append(
            _limit(
                "max_latency_ms",
                value,
                criteria.max_latency_ms,
                "ms",
                upper=True,
                estimated=estimated,
                note=f"p50 on {criteria.latency_target}" + (" (estimated)" if estimated else ""),
                missing=f"no latency on {criteria.latency_target} (not measured or projected)",
            )
        )
    if criteria.max_memory_mb is not None:
        results.append(
            _limit("max_memory_mb", candidate.peak_memory_mb, criteria.max_memory_mb, "MB", upper=True)
        )
    if criteria.min_speedup is not None:
        speedup = None
        if baseline.runtime and candidate.runtime and candidate.runtime.p50_ms > 0:
            speedup = baseline.runtime.p50_ms / candidate.runtime.p50_ms
        results.append(
            _limit("min_speedup", speedup, criteria.min_speedup, "x", upper=False, note="p50 here")
        )
    if criteria.min_compression is not None:
        ratio = size_before / size_after if size_before and size_after else None
        results.append(
            _limit(
                "min_compression", ratio, criteria.min_compression, "x", upper=False, note="artifact bytes"
            )
        )
    results += _check_accuracy(criteria, baseline, candidate)
    return CriteriaCheck(passed=all(r.passed for r in results), results=results)


def _check_accuracy(
    criteria: Criteria, baseline: Measurement, candidate: Measurement
) -> list[CriterionResult]:
    """Check the accuracy floor and the tolerated drop, respecting the metric's direction."""
    if criteria.accuracy_floor is None and criteria.max_accuracy_drop is None:
        return []
    # a candidate whose size and latency already ruled it out was not run for accuracy: not measured, not passed
    skipped = candidate.accuracy_skipped
    pair = (
        None
        if skipped is not None
        else matching_accuracy(baseline, candidate, criteria.accuracy_level, criteria.accuracy_metric)
    )
    results: list[CriterionResult] = []
    if pair is None:
        missing = skipped or "no accuracy figure on either version"
        if criteria.accuracy_floor is not None:
            results.append(
                _limit("accuracy_floor", None, criteria.accuracy_floor, "", upper=False, missing=missing)
            )
        if criteria.max_accuracy_drop is not None:
            results.append(
                _limit("max_accuracy_drop", None, criteria.max_accuracy_drop, "", upper=True, missing=missing)
            )
        return results
    before, after = pair
    if criteria.accuracy_floor is not None:
        results.append(
            _limit(
                "accuracy_floor",
                after.value,
                criteria.accuracy_floor,
                after.metric,
                upper=not after.higher_is_better,
                note=after.label,
            )
        )
    if criteria.max_accuracy_drop is not None:
        drop = before.value - after.value if after.higher_is_better else after.value - before.value
        unit = after.metric
        if criteria.accuracy_drop_unit == "relative_pct" and after.metric in RELATIVE_ERROR_METRICS:
            # already a fraction of the original's outputs (0 for the original): "within 2%" is 2 points of it
            drop, unit = drop * 100, f"% ({after.metric})"
        elif criteria.accuracy_drop_unit == "relative_pct":
            if before.value == 0:
                raise ValidationError(
                    f"cannot take a relative drop of {before.label}: the baseline value is 0",
                    hint="state the tolerated drop in absolute units",
                )
            drop, unit = drop / abs(before.value) * 100, "%"
        note = f"{before.label}: {before.value:.4g} -> {after.value:.4g}"
        # 1 - 0.98 is 0.020000000000000018 in floats: a drop of exactly the tolerated points must pass
        drop = round(drop, 12)
        results.append(
            _limit("max_accuracy_drop", drop, criteria.max_accuracy_drop, unit, upper=True, note=note)
        )
    return results
