"""The eval's own verdict on a candidate: the scenario's criteria checked on figures measured by the bench,
never robopt's say-so, with a shortfall that ranks near misses."""

from __future__ import annotations

from dataclasses import dataclass

from evals.bench import Measured
from tools.errors import RoboptError
from tools.evaluation.criteria import Criteria, CriteriaCheck, check_criteria

MISSING_SHORTFALL = 1e6
"""Shortfall of a criterion that could not be checked (a figure was not measured)."""


@dataclass(frozen=True)
class Verdict:
    """Whether every criterion passed, by how much it missed (0 when met), and the per-criterion check."""

    met: bool
    shortfall: float
    check: CriteriaCheck | None
    note: str = ""

    def missing(self) -> list[str]:
        """The criteria that failed, each with its value and limit."""
        if self.check is None:
            return [self.note] if self.note else []
        return [
            f"{r.name} {'-' if r.value is None else format(r.value, '.4g')} vs {r.limit:.4g}{r.unit}"
            for r in self.check.missing
        ]


def judge(criteria: Criteria, baseline: Measured, candidate: Measured) -> Verdict:
    """Check `criteria` on the candidate against the baseline (the original as measured on the same bench).

    The shortfall sums each missed criterion's miss relative to its limit, so 0 means met."""
    if baseline.measurement is None or candidate.measurement is None:
        return Verdict(False, float("inf"), None, "not measured")
    try:
        check = check_criteria(criteria, baseline.measurement, candidate.measurement)
    except RoboptError as error:
        return Verdict(False, float("inf"), None, error.one_line())
    shortfall = 0.0
    for result in check.missing:
        if result.margin is None:
            shortfall += MISSING_SHORTFALL
        else:
            shortfall += -result.margin / (abs(result.limit) or 1.0)
    return Verdict(check.passed, shortfall, check)
