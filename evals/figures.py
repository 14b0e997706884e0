"""A scenario's figures from the bench's measurements: goal met (the eval's own check, and robopt's claim),
robopt's result against each baseline and the oracle's best as ratios, latency over the roofline floor,
attempts and wall time against the oracle's, and the optimizer's peak memory against the model's size."""

from __future__ import annotations

from typing import Any

from evals.baselines import baselines_for
from evals.bench import Measured
from evals.judge import judge
from evals.oracle import OracleRun, best_for
from evals.robopt_run import RoboptRun
from evals.scenarios import Scenario

_MB = 1024 * 1024
ROBOPT_ROW = "robopt"
ORACLE_ROW = "oracle_best"


def _p50(m: Measured) -> float | None:
    """p50 latency in ms, when measured."""
    return m.measurement.runtime.p50_ms if m.measurement and m.measurement.runtime else None


def _size(m: Measured) -> float | None:
    """Artifact bytes, when measured."""
    if m.measurement is None or m.measurement.size is None or not m.measurement.size.artifact_bytes:
        return None
    return float(m.measurement.size.artifact_bytes)


def _accuracy(m: Measured) -> float | None:
    """The headline accuracy value, when measured."""
    return m.measurement.accuracy.value if m.measurement and m.measurement.accuracy else None


def _ratio(before: float | None, after: float | None) -> float | None:
    """before / after (above 1: the second is faster or smaller), None when either is missing."""
    return before / after if before and after else None


def _change(before: float | None, after: float | None) -> float | None:
    """after - before, None when either is missing."""
    return after - before if before is not None and after is not None else None


def ratios(reference: Measured, candidate: Measured) -> dict[str, float | None]:
    """Candidate against reference: speedup (p50), compression (artifact bytes), accuracy change (metric units)."""
    return {
        "speedup": _ratio(_p50(reference), _p50(candidate)),
        "compression": _ratio(_size(reference), _size(candidate)),
        "accuracy_change": _change(_accuracy(reference), _accuracy(candidate)),
    }


def row(name: str, label: str, scenario: Scenario, original: Measured, candidate: Measured) -> dict[str, Any]:
    """One table row: the candidate's own figures, its ratios to FP32 eager and the eval's verdict."""
    verdict = judge(scenario.criteria, original, candidate)
    p50, size = _p50(candidate), _size(candidate)
    return {
        "name": name,
        "label": label,
        "chain": candidate.name,
        "status": candidate.status,
        "reason": candidate.reason,
        "met": verdict.met,
        "missing": verdict.missing(),
        "p50_ms": p50,
        "size_mb": size / _MB if size else None,
        "accuracy": _accuracy(candidate),
        "floor_ms": candidate.floor_ms,
        "latency_over_floor": _ratio(p50, candidate.floor_ms),
        "vs_fp32_eager": ratios(original, candidate),
    }


def scenario_figures(
    scenario: Scenario,
    baselines: dict[str, Measured],
    oracle: OracleRun,
    robopt: RoboptRun,
    robopt_final: Measured | None,
) -> dict[str, Any]:
    """Every figure the summary shows for one scenario, as plain JSON."""
    original = baselines["fp32_eager"]
    delivered = robopt_final is not None and robopt_final.status == "ok"
    result = robopt_final if delivered and robopt_final is not None else original
    robopt_label = "robopt" if delivered else f"robopt ({robopt.status}: no model, the original stands)"
    robopt_row = row(ROBOPT_ROW, robopt_label, scenario, original, result)
    if not delivered:
        robopt_row["met"] = False
        robopt_row["missing"] = [f"no model delivered ({robopt.status})"]
    rows = [robopt_row]
    versus: dict[str, dict[str, float | None]] = {}
    for baseline in baselines_for(scenario.setup):
        measured = baselines[baseline.name]
        rows.append(row(baseline.name, baseline.label, scenario, original, measured))
        versus[baseline.name] = ratios(measured, result) if measured.status == "ok" else {}
    best = best_for(scenario, original, oracle.measured)
    if best is not None:
        rows.append(row(ORACLE_ROW, f"oracle best: {best.name}", scenario, original, best))
        versus[ORACLE_ROW] = ratios(best, result)
    model_mb = (_size(original) or 0) / _MB
    peak = robopt.memory.get("peak_tree_rss_mb")
    accuracy = original.measurement.accuracy if original.measurement else None
    return {
        "scenario": scenario.name,
        "model": scenario.setup.model,
        "goal": scenario.goal,
        "met_means": scenario.met_means,
        "feasible": scenario.feasible,
        "criteria": scenario.criteria.model_dump(mode="json", exclude_defaults=True),
        "accuracy": {
            "label": accuracy.label if accuracy else None,
            "higher_is_better": accuracy.higher_is_better if accuracy else None,
            "samples": accuracy.samples if accuracy else None,
        },
        "met": robopt_row["met"],
        "robopt": {
            **robopt.to_json(),
            "delivered": delivered,
            "met_by_eval": robopt_row["met"],
            "claim_agrees": robopt.claimed_met == robopt_row["met"],
            "attempts_count": len(robopt.attempts),
        },
        "rows": rows,
        "robopt_vs": versus,
        "oracle": {
            "best": best.name if best else None,
            "best_met": rows[-1]["met"] if best else False,
            "candidates": len(oracle.candidates),
            "measured": len(oracle.measured),
            "wall_s": round(oracle.wall_s, 1),
        },
        "cost": {
            "robopt_attempts": len(robopt.attempts),
            "robopt_final_attempt": robopt.final_attempt,
            "oracle_candidates": len(oracle.candidates),
            "robopt_wall_s": round(robopt.wall_s, 1),
            "oracle_wall_s": round(oracle.wall_s, 1),
            "wall_ratio": _ratio(oracle.wall_s, robopt.wall_s),
        },
        "memory": {
            "optimizer_peak_mb": peak,
            "optimizer_increase_mb": robopt.memory.get("peak_increase_mb"),
            "model_mb": round(model_mb, 3),
            "peak_over_model": _ratio(peak, model_mb),
            "method": robopt.memory.get("method"),
        },
    }
