"""Evaluation: judge one attempt's measured candidate against its parent, the baseline and the goal.

Hard guards come first and no reasoner can overrule them: a candidate that breaks the accuracy criterion, or
is slower than its parent on the latency target, or improves nothing, is rejected even when it is smaller. Once a
version meets every criterion, a candidate that also meets them but is not better than the best such version on
the goal's priority is rejected too: it stays stored, but the search does not continue from it (a version no
better than the best would only lead the next attempts away from it).
Within the guards, `judge_rules` (or the LLM, through the `evaluation` prompt) decides and explains.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agents.base import AgentSpec
from agents.intake import GoalSpec
from tools.errors import ValidationError
from tools.evaluation.criteria import CriteriaCheck
from tools.evaluation.measurement import Measurement
from tools.evaluation.priority import BestToBeat

LATENCY_NOISE = 0.03
"""Relative latency change treated as measurement noise (p50 of a few dozen runs on a shared CPU)."""
MIN_GAIN = 0.02
"""Smallest relative gain in size or latency that counts as an improvement."""


class Guard(BaseModel):
    """One hard rule checked on the candidate."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


class VerdictInput(BaseModel):
    """The attempt to judge: what ran, the figures before and after, and the criteria check."""

    model_config = ConfigDict(frozen=True)

    goal: GoalSpec
    steps: list[str] = Field(description="Techniques applied in this attempt, in order.")
    baseline: Measurement
    parent: Measurement
    candidate: Measurement
    check: CriteriaCheck = Field(description="The candidate's criteria check against the baseline.")
    parent_check: CriteriaCheck
    best: Measurement | None = Field(
        default=None,
        description="The best version so far that meets every criterion (None while none does): a candidate that "
        "also meets them must beat it on the goal's priority to be kept.",
    )
    guards: list[Guard]


class Verdict(BaseModel):
    """Accept (the candidate becomes current) or reject (roll back to the parent), with the reason."""

    model_config = ConfigDict(frozen=True)

    accept: bool
    reason: str = Field(description="One or two sentences naming the figures that decided.")


def _latency(measurement: Measurement, target: str) -> float | None:
    """p50 on the target (measured here, projected elsewhere)."""
    found = measurement.latency_on(target)
    return found[0] if found else None


def _size(measurement: Measurement) -> int | None:
    """Artifact bytes."""
    return measurement.size.artifact_bytes if measurement.size else None


_LATENCY_CRITERIA = ("max_latency_ms", "min_speedup")


def _bounds_latency(goal: GoalSpec) -> bool:
    """Whether the goal sets a latency limit or a speed-up."""
    return any(getattr(goal.criteria, name) is not None for name in _LATENCY_CRITERIA)


def guards(
    goal: GoalSpec,
    parent: Measurement,
    candidate: Measurement,
    check: CriteriaCheck,
    parent_check: CriteriaCheck,
    best: Measurement | None = None,
) -> list[Guard]:
    """The hard rules: accuracy kept, not slower than the parent on the target (unless the slower step newly
    meets a criterion while the goal's own latency bounds still hold), some real gain, and, when a version
    already meets every criterion, better than the best such version on the goal's priority."""
    target = goal.criteria.latency_target
    result: list[Guard] = []
    accuracy = [r for r in check.results if r.name in ("accuracy_floor", "max_accuracy_drop")]
    broken = [r for r in accuracy if not r.passed]
    result.append(
        Guard(
            name="accuracy",
            passed=not broken,
            detail="; ".join(f"{r.name}: {r.note or r.value} (limit {r.limit:g})" for r in broken)
            or "accuracy criteria kept",
        )
    )
    before, after = _latency(parent, target), _latency(candidate, target)
    newly_met = {r.name for r in check.results if r.passed} - {
        r.name for r in parent_check.results if r.passed
    }
    unknown = before is not None and after is None
    slower = unknown or (before is not None and after is not None and after > before * (1 + LATENCY_NOISE))
    detail = f"p50 on {target}: {before:.3f} -> {after:.3f} ms" if before and after else "latency unknown"
    # A slowdown that buys a criterion the parent missed is accepted when the goal's own latency bounds still
    # hold (none set, a limit met, or 'at most 2x slower'): whether INT8 or 4-bit kernels beat FP32 on a small
    # model depends on the CPU, and the user said what speed they need. The slowdown is named; a step that
    # trades speed for nothing new is still refused.
    latency_kept = all(r.passed for r in check.results if r.name in _LATENCY_CRITERIA)
    traded = slower and not unknown and latency_kept and bool(newly_met)
    if traded:
        bound = "the goal's latency bounds hold" if _bounds_latency(goal) else "the goal bounds no latency"
        detail += (
            f" ({after / before:.2f}x slower, allowed: {bound} and this step newly meets {sorted(newly_met)})"
        )
    result.append(Guard(name="not_slower", passed=not slower or traded, detail=detail))
    size_before, size_after = _size(parent), _size(candidate)
    smaller = bool(size_before and size_after and size_after < size_before * (1 - MIN_GAIN))
    faster = bool(before and after and after < before * (1 - LATENCY_NOISE))
    result.append(
        Guard(
            name="improves",
            passed=smaller or faster or bool(newly_met),
            detail=", ".join(
                part
                for part in (
                    f"{size_before / max(size_after or 1, 1):.2f}x smaller" if smaller else "",
                    f"{before / max(after or 1e-9, 1e-9):.2f}x faster" if faster else "",
                    f"newly meets {sorted(newly_met)}" if newly_met else "",
                )
                if part
            )
            or "neither smaller nor faster than its parent",
        )
    )
    if best is not None and check.passed and not goal.stop_at_first:
        result.append(beats_best(goal, best, candidate))
    return result


def best_to_beat(goal: GoalSpec, best: Measurement) -> BestToBeat:
    """The best passing version as a candidate must beat it on the goal's priority, with this agent's noise
    margins: what `beats_best` judges by, and the gate that lets evaluation skip accuracy it need not measure.
    """
    return BestToBeat.of(
        best,
        goal.priority,
        goal.criteria.latency_target,
        latency_noise=LATENCY_NOISE,
        min_gain=MIN_GAIN,
    )


def beats_best(goal: GoalSpec, best: Measurement, candidate: Measurement) -> Guard:
    """Whether a candidate that meets every criterion beats the best passing version on the goal's priority:
    faster (latency), smaller (size), or faster and no larger / smaller and no slower (Pareto)."""
    priority = goal.priority
    comparison = best_to_beat(goal, best).compare(candidate)
    return Guard(
        name="beats_best",
        passed=comparison.better,
        detail=(
            f"meets every criterion but is not better on {priority} than the best passing version "
            f"{best.version_id} ({comparison.figures}); kept as a version, not continued from"
            if not comparison.better
            else f"better on {priority} than the best passing version {best.version_id} ({comparison.figures})"
        ),
    )


def judge_rules(payload: VerdictInput) -> Verdict:
    """Accept when every guard passes; the reason names the gain and what is still missing."""
    failed = [g for g in payload.guards if not g.passed]
    if failed:
        return Verdict(accept=False, reason="; ".join(f"{g.name}: {g.detail}" for g in failed))
    gain = next(g.detail for g in payload.guards if g.name == "improves")
    missing = [r.name for r in payload.check.missing]
    tail = f"; still missing {', '.join(missing)}" if missing else "; every criterion met"
    return Verdict(accept=True, reason=f"{gain}, accuracy kept{tail}")


def check_verdict(payload: VerdictInput, verdict: Verdict) -> None:
    """Refuse a verdict that accepts a candidate a hard guard rejects."""
    failed = [g.name for g in payload.guards if not g.passed]
    if verdict.accept and failed:
        raise ValidationError(f"cannot accept: the candidate fails the hard guards {failed}")


EVALUATION = AgentSpec(
    name="evaluation",
    prompt="evaluation",
    input_type=VerdictInput,
    output_type=Verdict,
    rules=judge_rules,
    check=check_verdict,
)
