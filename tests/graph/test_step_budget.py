"""A step's child is limited by what is left of the job's time budget, never less than the floor."""

from __future__ import annotations

import time

import pytest

from graph.context import STEP_FLOOR_S, step_time_s
from tests.graph.support import vla_options


@pytest.mark.parametrize(
    ("elapsed_s", "expected_s"),
    [
        (0.0, 200.0),  # a fresh job: the attempt's own limit
        (450.0, 150.0),  # 150 s of the job's 600 s left: that much
        (590.0, STEP_FLOOR_S),  # 10 s left: the floor, so the step can load and report
        (900.0, STEP_FLOOR_S),  # overrun already: the floor
    ],
)
def test_a_steps_time_limit_is_the_jobs_time_left(elapsed_s: float, expected_s: float) -> None:
    state = {
        "options": vla_options(time_budget_s=600.0, attempt_time_s=200.0),
        "started_at": time.time() - elapsed_s,
    }
    assert step_time_s(state) == pytest.approx(expected_s, abs=1.0)  # type: ignore[arg-type]
