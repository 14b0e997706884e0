"""Better on the goal's priority: the one comparison of a candidate with the best version that meets every
criterion, shared by the evaluation guard (`agents.evaluation.beats_best`) and the measurement's gate
(`evaluate_version(..., must_beat=...)`) so the two cannot drift apart.

Latency: faster by more than the latency noise. Size: smaller by more than the smallest counted gain. Pareto:
faster and no larger, or smaller and no slower. The margins are passed in by the caller (the evaluation agent
owns them); tools never judge on their own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.evaluation.measurement import Measurement

SearchPriority = Literal["latency", "size", "pareto"]


class PriorityComparison(BaseModel):
    """A candidate set against the best passing version on the goal's priority."""

    model_config = ConfigDict(frozen=True)

    better: bool = Field(description="The candidate beats the best version on the priority.")
    decided: bool = Field(
        description="Every figure the priority needs is known on both versions; when False, `better` is False "
        "for want of figures, not because the candidate was found worse."
    )
    figures: str = Field(description="The figures compared, e.g. 'p50 on here 1.2 ms against 1.0 ms, ...'.")


class BestToBeat(BaseModel):
    """The best version that meets every criterion, as a candidate must beat it: its figures on the goal's
    priority and the noise margins within which a difference is no gain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    priority: SearchPriority
    version_id: str = Field(description="The best passing version.")
    target: str = Field(description="The latency target its p50 is on (the goal's latency target).")
    p50_ms: float | None = Field(ge=0, description="Its p50 on `target`; None when unknown.")
    artifact_bytes: int | None = Field(
        ge=0, description="Its deployable artifact's bytes; None when unknown."
    )
    latency_noise: float = Field(ge=0, lt=1, description="Relative p50 change treated as noise.")
    min_gain: float = Field(ge=0, lt=1, description="Smallest relative size change that counts.")

    @classmethod
    def of(
        cls,
        best: Measurement,
        priority: SearchPriority,
        target: str,
        *,
        latency_noise: float,
        min_gain: float,
    ) -> BestToBeat:
        """The gate for `best`'s measured figures."""
        found = best.latency_on(target)
        return cls(
            priority=priority,
            version_id=best.version_id,
            target=target,
            p50_ms=found[0] if found else None,
            artifact_bytes=best.size.artifact_bytes if best.size else None,
            latency_noise=latency_noise,
            min_gain=min_gain,
        )

    def compare(self, candidate: Measurement) -> PriorityComparison:
        """Whether `candidate` beats this version on the priority, with the figures that decided."""
        found = candidate.latency_on(self.target)
        after = found[0] if found else None
        size_after = candidate.size.artifact_bytes if candidate.size else None
        before, size_before = self.p50_ms, self.artifact_bytes
        faster = not_slower = smaller = not_larger = False
        latency_known, size_known = bool(before and after), bool(size_before and size_after)
        if before and after:
            faster = after < before * (1 - self.latency_noise)
            not_slower = after <= before * (1 + self.latency_noise)
        if size_before and size_after:
            smaller = size_after < size_before * (1 - self.min_gain)
            not_larger = size_after <= size_before * (1 + self.min_gain)
        better = {
            "latency": faster,
            "size": smaller,
            "pareto": (faster and not_larger) or (smaller and not_slower),
        }[self.priority]
        decided = {
            "latency": latency_known,
            "size": size_known,
            "pareto": latency_known and size_known,
        }[self.priority]
        figures = ", ".join(
            part
            for part in (
                f"p50 on {self.target} {after:.3f} ms against {before:.3f} ms" if before and after else "",
                f"{size_after:,} bytes against {size_before:,}" if size_before and size_after else "",
            )
            if part
        )
        return PriorityComparison(better=better, decided=decided, figures=figures)

    def rules_out(self, candidate: Measurement) -> str | None:
        """Why `candidate` cannot beat this version whatever its accuracy (so accuracy need not be measured),
        or None when it may: it is known not to be better on the priority."""
        comparison = self.compare(candidate)
        if comparison.better or not comparison.decided:
            return None
        return (
            f"not better on {self.priority} than the best passing version {self.version_id} "
            f"({comparison.figures}); accuracy not measured: it could not change the verdict"
        )
