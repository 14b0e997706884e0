"""The evals' targets table (issue 15): robopt against the fastest one-shot baseline that meets the bound, and
against the oracle's best, its candidates and its wall time."""

from __future__ import annotations

from typing import Any

import pytest

from evals.summary import target_figures, targets_table


def _row(name: str, p50_ms: float, size_mb: float, met: bool, status: str = "ok") -> dict[str, Any]:
    return {"name": name, "label": name, "status": status, "met": met, "p50_ms": p50_ms, "size_mb": size_mb}


def _scenario(robopt_ms: float, *, met: bool = True, feasible: bool = True) -> dict[str, Any]:
    return {
        "scenario": "conv",
        "feasible": feasible,
        "met": met,
        "rows": [
            _row("robopt", robopt_ms, 1.0, met),
            _row("fp32_eager", 0.9, 3.4, False),
            _row("ort_int8_dynamic", 0.2, 1.2, True),
            _row("fp32_onnxruntime", 0.1, 3.4, False),  # faster, but misses the bound: not the yardstick
            _row("torchao_int8_wo", 0.05, 1.0, True, status="n/a"),  # not measured
            _row("oracle_best", 0.08, 0.3, True),
        ],
        "cost": {
            "robopt_attempts": 4,
            "oracle_candidates": 58,
            "robopt_wall_s": 40.0,
            "oracle_wall_s": 400.0,
        },
    }


def test_robopt_is_set_against_the_fastest_baseline_that_meets_the_bound() -> None:
    figures = target_figures(_scenario(0.25))
    assert figures["best_baseline"] == "ort_int8_dynamic"
    assert figures["speed_over_best_baseline"] == pytest.approx(0.8)
    assert figures["compression_over_best_baseline"] == pytest.approx(1.2)
    assert figures["beats_best_baseline"] is False  # slower than the one-liner
    assert target_figures(_scenario(0.1))["beats_best_baseline"] is True


def test_the_oracle_shares_hold_only_together() -> None:
    near = target_figures(_scenario(0.085))
    assert near["oracle_speed_share"] == pytest.approx(0.08 / 0.085)
    assert near["oracle_candidate_share"] == pytest.approx(4 / 58)
    assert near["oracle_wall_share"] == pytest.approx(0.1)
    assert near["oracle_targets_hold"] is True
    assert target_figures(_scenario(0.2))["oracle_targets_hold"] is False  # 40% of the oracle's speed-up


def test_an_unmet_or_infeasible_scenario_claims_nothing() -> None:
    unmet = target_figures(_scenario(0.05, met=False))
    assert unmet["beats_best_baseline"] is None and unmet["oracle_targets_hold"] is None
    table = targets_table({"scenarios": [_scenario(0.1), _scenario(0.1, feasible=False)]})
    assert len(table) == 3 and "| conv | ort_int8_dynamic | 2.00x / 1.20x | yes |" in table[2]
