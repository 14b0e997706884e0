"""The eval suite's quick subset, run as a user runs it (`python -m evals --quick`) into a temporary folder.

A benchmark, not a timed test: it prints the summary and fails only on a broken run (no output, a missing
row, a figure that is not a positive finite number, an infeasible goal reported met), never on a timing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from evals.baselines import BASELINE_NAMES
from evals.scenarios import select_scenarios

pytestmark = pytest.mark.performance
REPO = Path(__file__).resolve().parents[2]


def _positive(value: object) -> bool:
    """A finite number above zero."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_the_quick_suite_writes_its_figures_for_every_scenario(reference_cache: Path, tmp_path: Path) -> None:
    """Run the quick subset and check every scenario has its rows, figures, plot and an honest verdict."""
    out, data = tmp_path / "results", tmp_path / "data"
    command = [sys.executable, "-m", "evals", "--quick", "--out", str(out), "--data-dir", str(data)]
    command += ["--reference-cache", str(reference_cache)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    print(finished.stdout[-6000:])
    assert finished.returncode == 0, finished.stderr[-4000:]
    summary = (out / "summary.md").read_text()
    document = json.loads((out / "results.json").read_text())
    print(summary)

    expected = {s.name: s for s in select_scenarios(quick=True)}
    assert [s["scenario"] for s in document["scenarios"]] == list(expected)
    assert any(not s.feasible for s in expected.values()), "the quick subset needs an infeasible goal"
    for result in document["scenarios"]:
        scenario = expected[result["scenario"]]
        rows = {row["name"]: row for row in result["rows"]}
        assert set(rows) >= {"robopt", *BASELINE_NAMES, "oracle_best"}, sorted(rows)
        assert f"| {scenario.name} |" in summary
        assert (out / f"pareto_{scenario.name}.png").stat().st_size > 10_000
        original = rows["fp32_eager"]
        assert original["status"] == "ok" and original["vs_fp32_eager"]["speedup"] == pytest.approx(1.0)
        for row in result["rows"]:
            if row["status"] != "ok":
                continue
            for key in ("p50_ms", "size_mb", "accuracy", "floor_ms", "latency_over_floor"):
                assert _positive(row[key]), (scenario.name, row["name"], key, row[key])
            assert _positive(row["vs_fp32_eager"]["speedup"]) and _positive(
                row["vs_fp32_eager"]["compression"]
            )
        robopt = result["robopt"]
        assert robopt["status"] in ("goal_met", "best_effort", "needs_input"), robopt.get("error")
        assert result["met"] == rows["robopt"]["met"] == robopt["met_by_eval"]
        assert robopt["claim_agrees"] == (robopt["claimed_met"] == result["met"])
        assert _positive(result["memory"]["optimizer_peak_mb"]) and _positive(result["memory"]["model_mb"])
        assert result["cost"]["oracle_candidates"] > len(BASELINE_NAMES) and _positive(
            result["cost"]["oracle_wall_s"]
        )
        if not scenario.feasible:
            assert not result["met"] and not robopt["claimed_met"], robopt
            assert robopt["status"] in ("best_effort", "needs_input")
        else:
            assert robopt["delivered"] and _positive(robopt["wall_s"]) and robopt["attempts_count"] >= 1
