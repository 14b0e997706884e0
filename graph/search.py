"""What the search has found so far: the accepted versions, the best one that meets every criterion, and how
many attempts were made since a version first met them (the improvement phase's budget)."""

from __future__ import annotations

from graph.state import JobState, VersionPoint
from tools.evaluation.criteria import Criteria, check_criteria
from tools.evaluation.measurement import Measurement


def accepted_points(state: JobState) -> list[VersionPoint]:
    """The original and every accepted version, each with its lineage (techniques since the original)."""
    baseline = state.get("baseline")
    if baseline is None:
        return []
    points = [VersionPoint(ref=state["original"], measurement=baseline, lineage=[])]
    lineage: dict[str, list[str]] = {}
    for attempt in state.get("attempts", []):
        if attempt.status == "accepted" and attempt.version and attempt.measurement:
            parent = lineage.get(attempt.parent_version, [])
            lineage[attempt.version.version_id] = parent + [str(s["type"]) for s in attempt.steps]
            points.append(
                VersionPoint(
                    ref=attempt.version,
                    measurement=attempt.measurement,
                    lineage=lineage[attempt.version.version_id],
                )
            )
    return points


def _latency(measurement: Measurement, target: str) -> float:
    found = measurement.latency_on(target)
    return found[0] if found else float("inf")


def _size(measurement: Measurement) -> float:
    return float(measurement.size.artifact_bytes or 0) if measurement.size else float("inf")


def priority_key(measurement: Measurement, criteria: Criteria, smallest: bool) -> tuple[float, float]:
    """Sort key of a passing version: (size, latency) when size is the priority, else (latency, size)."""
    latency, size = _latency(measurement, criteria.latency_target), _size(measurement)
    return (size, latency) if smallest else (latency, size)


def best_passing(state: JobState) -> VersionPoint | None:
    """The accepted version (or the original) that meets every criterion and is best on the goal's priority:
    the smallest for a size priority, else the fastest (as finalize chooses); None while none meets them."""
    goal, baseline = state.get("goal"), state.get("baseline")
    if goal is None or baseline is None:
        return None
    passing = [
        point
        for point in accepted_points(state)
        if check_criteria(goal.criteria, baseline, point.measurement).passed
    ]
    smallest = goal.priority == "size"
    return min(passing, key=lambda p: priority_key(p.measurement, goal.criteria, smallest), default=None)


def improvement_attempts(state: JobState) -> int:
    """Attempts made after the first version that met every criterion (all of them when the original did)."""
    goal, baseline = state.get("goal"), state.get("baseline")
    attempts = state.get("attempts", [])
    if goal is None or baseline is None:
        return 0
    if check_criteria(goal.criteria, baseline, baseline).passed:
        return len(attempts)
    for position, attempt in enumerate(attempts):
        if attempt.status == "accepted" and attempt.check is not None and attempt.check.passed:
            return len(attempts) - position - 1
    return 0
