"""Meet, then improve: once a version meets every criterion, predict what each untried chain would gain over the
best passing version on the goal's priority, and say when the search should stop.

A chain's predicted effect is the product of its steps' effects. A step's effect is what this job measured when
it already ran the same technique alone (median speed-up over its parent, median compression), else the
registry's measured effect on the reference model closest to the architecture (`TechniqueOption.expected`),
else no change. The prediction is then set against the best passing version: predicted p50 / size after the
chain, from the version the chain starts from, over the best version's measured p50 / size.

The search stops when the best prediction is below measurement noise (`LATENCY_GAIN_NOISE` for latency,
`SIZE_GAIN_NOISE` for size), after `MAX_IMPROVEMENT_ATTEMPTS` attempts since the goal was first met (so a met
goal never balloons into a long job), or when nothing untried is left; the budget rules still apply.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field

from agents.evaluation import MIN_GAIN
from agents.planning import (
    AttemptSummary,
    PlannedTechnique,
    PlanningInput,
    RankedCandidate,
    TechniqueOption,
    VersionSummary,
)
from tools.evaluation.priority import SearchPriority
from tools.evaluation.report import SearchStop, SearchStopRule, UntriedChain

LATENCY_GAIN_NOISE = 0.05
"""A predicted latency gain under 5% is not searched for: p50 noise on a shared CPU is ~3% (the evaluation's
LATENCY_NOISE) and a prediction from reference-model medians carries its own error on top."""
SIZE_GAIN_NOISE = MIN_GAIN
"""Size is measured exactly (artifact bytes): below the evaluation's smallest counted gain (2%) is no gain."""
MAX_IMPROVEMENT_ATTEMPTS = 3
"""At most this many attempts after a version first meets every criterion of a 'meet' goal ('fastest' and
'smallest' asked for the search outright: only the job's budget and the noise rule bound them)."""


class Prediction(BaseModel):
    """An untried chain with its predicted figures against the best passing version."""

    model_config = ConfigDict(frozen=True)

    steps: list[PlannedTechnique]
    rationale: str
    start_from: str = Field(description="The version the chain would start from.")
    speedup: float | None = Field(description="Best version's p50 / predicted p50 after the chain.")
    compression: float | None = Field(description="Best version's bytes / predicted bytes after the chain.")
    gain: float = Field(description="Predicted relative gain on the priority (0 when it gains nothing).")

    @property
    def chain(self) -> str:
        """The techniques joined with '+'."""
        return "+".join(step.technique for step in self.steps)

    def ranked(self) -> RankedCandidate:
        """The prediction as a row of the planner's candidate table."""
        return RankedCandidate(
            steps=self.steps,
            start_from=self.start_from,
            rationale=self.rationale,
            predicted_speedup=None if self.speedup is None else round(self.speedup, 3),
            predicted_compression=None if self.compression is None else round(self.compression, 3),
            predicted_gain=round(self.gain, 4),
        )

    def untried(self) -> UntriedChain:
        """The prediction as the report lists it."""
        return UntriedChain(
            chain=self.chain,
            start_from=self.start_from,
            predicted_speedup=None if self.speedup is None else round(self.speedup, 3),
            predicted_compression=None if self.compression is None else round(self.compression, 3),
            predicted_gain=round(self.gain, 4),
        )


def noise_threshold(priority: SearchPriority) -> float:
    """The smallest predicted gain worth an attempt on the priority."""
    return {"latency": LATENCY_GAIN_NOISE, "size": SIZE_GAIN_NOISE}.get(
        priority, min(LATENCY_GAIN_NOISE, SIZE_GAIN_NOISE)
    )


def priority_gain(priority: SearchPriority, speedup: float | None, compression: float | None) -> float:
    """Relative gain on the priority; for Pareto, the larger gain of a side that beats noise while the other
    side does not get worse than its noise (faster and no larger, or smaller and no slower), else 0."""
    faster = (speedup or 1.0) - 1.0
    smaller = (compression or 1.0) - 1.0
    if priority == "latency":
        return max(faster, 0.0) if speedup is not None else 0.0
    if priority == "size":
        return max(smaller, 0.0) if compression is not None else 0.0
    sides = []
    if speedup is not None and faster >= LATENCY_GAIN_NOISE and smaller >= -SIZE_GAIN_NOISE:
        sides.append(faster)
    if compression is not None and smaller >= SIZE_GAIN_NOISE and faster >= -LATENCY_GAIN_NOISE:
        sides.append(smaller)
    return max(sides, default=0.0)


def job_effects(attempts: list[AttemptSummary]) -> dict[str, tuple[float | None, float | None]]:
    """What this job measured for each technique it ran alone: (median speed-up, median size ratio)."""
    speeds: dict[str, list[float]] = {}
    sizes: dict[str, list[float]] = {}
    for attempt in attempts:
        if attempt.status == "failed" or len(attempt.steps) != 1:
            continue
        name = str(attempt.steps[0].get("type"))
        if attempt.speedup:
            speeds.setdefault(name, []).append(attempt.speedup)
        if attempt.compression:
            sizes.setdefault(name, []).append(1.0 / attempt.compression)
    return {
        name: (
            statistics.median(speeds[name]) if name in speeds else None,
            statistics.median(sizes[name]) if name in sizes else None,
        )
        for name in set(speeds) | set(sizes)
    }


def chain_effect(
    steps: list[PlannedTechnique],
    options: dict[str, TechniqueOption],
    architecture: str,
    measured: dict[str, tuple[float | None, float | None]],
    source_format: str | None = None,
) -> tuple[float, float]:
    """(speed-up, size ratio) predicted for the chain: this job's measurement of a step, else the registry's.

    The registry measured every technique from the reference model as stored (PyTorch eager), so an ONNX
    technique's figure includes the export. Applied to a version that is already ONNX (`source_format`, and
    the format each step leaves), that figure is divided by the export's own measured effect."""
    speed = size = 1.0
    fmt = source_format
    export = options.get("onnx_export")
    export_speed, export_size = export.expected(architecture) if export else (None, None)
    for step in steps:
        option = options.get(step.technique)
        step_speed, step_size = option.expected(architecture) if option else (None, None)
        if option is not None and fmt == "onnx" and step.technique != "onnx_export":
            step_speed = step_speed / export_speed if step_speed and export_speed else step_speed
            step_size = step_size / export_size if step_size and export_size else step_size
        here = measured.get(step.technique, (None, None))
        step_speed, step_size = here[0] or step_speed, here[1] or step_size
        speed *= step_speed if step_speed and step_speed > 0 else 1.0
        size *= step_size if step_size and step_size > 0 else 1.0
        fmt = option.output_format if option is not None else fmt
    return speed, size


def _latency(version: VersionSummary, target: str) -> float | None:
    """p50 on the target."""
    found = version.measurement.latency_on(target)
    return found[0] if found and found[0] > 0 else None


def _bytes(version: VersionSummary) -> int | None:
    """Artifact bytes."""
    size = version.measurement.size
    return size.artifact_bytes if size and size.artifact_bytes else None


def predict(
    payload: PlanningInput,
    source: VersionSummary,
    best: VersionSummary,
    steps: list[PlannedTechnique],
    rationale: str,
) -> Prediction:
    """The chain's predicted figures from `source`, set against the best passing version."""
    options = {option.name: option for option in payload.techniques}
    speed, size = chain_effect(
        steps, options, payload.analysis.architecture, job_effects(payload.attempts), source.format
    )
    target = payload.goal.criteria.latency_target
    source_ms, best_ms = _latency(source, target), _latency(best, target)
    source_bytes, best_bytes = _bytes(source), _bytes(best)
    speedup = best_ms / (source_ms / speed) if source_ms and best_ms else None
    compression = best_bytes / (source_bytes * size) if source_bytes and best_bytes else None
    return Prediction(
        steps=steps,
        rationale=rationale,
        start_from=source.version_id,
        speedup=speedup,
        compression=compression,
        gain=priority_gain(payload.goal.priority, speedup, compression),
    )


def search_stop(
    rule: SearchStopRule,
    rationale: str,
    payload: PlanningInput,
    predictions: list[Prediction] | None = None,
) -> SearchStop:
    """The stop record the report shows: rule, rationale, the goal's priority, what was left untried."""
    return SearchStop(
        rule=rule,
        rationale=rationale,
        priority=payload.goal.priority,
        untried=[p.untried() for p in predictions or []][:8],
    )


def describe(priority: SearchPriority) -> str:
    """What the search is looking for, in words."""
    return {
        "latency": "faster version",
        "size": "smaller version",
        "pareto": "version that is faster and no larger, or smaller and no slower",
    }[priority]
