"""The exhaustive oracle: every available single technique and every two-step combination on a small grid,
each applied and measured on the bench; the best it finds for a goal is what a blind search could give.

The grid's two axes are a structural first step (pruning, factorization, clustering) and a precision or
runtime second step (INT8/INT4/FP16 in ONNX Runtime or torch). A pair reuses its first step's stored version,
so the oracle's cost counts each piece of work once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from evals.bench import Bench, Measured, chain_name
from evals.judge import judge
from evals.scenarios import GridName, Scenario
from evals.technique_benchmark import BENCHMARK_CONFIGS
from tools.techniques import techniques, unavailable_reason

FIRST_STEPS: dict[GridName, list[dict[str, Any]]] = {
    "standard": [
        {"type": "structured_prune", "ratio": 0.3},
        {"type": "structured_prune", "ratio": 0.5},
        {"type": "magnitude_prune"},
        {"type": "low_rank", "rank_selection": "budget", "budget": 0.5},
        {"type": "weight_clustering"},
        {"type": "depth_prune"},
    ],
    "small": [
        {"type": "structured_prune", "ratio": 0.3},
        {"type": "low_rank", "rank_selection": "budget", "budget": 0.5},
        {"type": "depth_prune"},
    ],
    "quick": [{"type": "structured_prune", "ratio": 0.3}],
}
SECOND_STEPS: dict[GridName, list[dict[str, Any]]] = {
    "standard": [
        {"type": "ort_int8_dynamic"},
        {"type": "ort_int8_static"},
        {"type": "ort_matmul_4bits"},
        {"type": "onnx_fp16"},
        {"type": "torchao_int8_weight_only"},
        {"type": "torch_bf16_cast"},
    ],
    "small": [
        {"type": "ort_int8_dynamic"},
        {"type": "ort_matmul_4bits"},
        {"type": "torchao_int8_weight_only"},
    ],
    "quick": [{"type": "ort_int8_dynamic"}, {"type": "ort_matmul_4bits"}],
}
QUICK_SINGLES = (
    "structured_prune",
    "magnitude_prune",
    "weight_clustering",
    "ort_int8_static",
    "ort_matmul_4bits",
)
"""The quick grid's singles beyond the baselines (which are singles too, measured once)."""


@dataclass
class OracleRun:
    """Every candidate the oracle measured (the baselines it shares included) and what it cost."""

    grid: GridName
    candidates: list[Measured] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def measured(self) -> list[Measured]:
        """Candidates that ran and were measured."""
        return [c for c in self.candidates if c.status == "ok" and c.measurement is not None]

    @property
    def work_s(self) -> float:
        """Seconds of apply + measure over every candidate (each piece of work counted once)."""
        return sum(c.work_s for c in self.candidates)

    def to_json(self) -> dict[str, Any]:
        """Grid, cost and each candidate's outcome (figures without the full measurement)."""
        rows = []
        for c in self.candidates:
            row = c.to_json()
            row.pop("measurement")
            rows.append(row)
        return {
            "grid": self.grid,
            "first_steps": FIRST_STEPS[self.grid],
            "second_steps": SECOND_STEPS[self.grid],
            "candidates": len(self.candidates),
            "measured": len(self.measured),
            "wall_s": round(self.wall_s, 1),
            "work_s": round(self.work_s, 1),
            "rows": rows,
        }


def single_chains(grid: GridName) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """Every available technique once, with the benchmark's settings ((chain, reusable prefix) pairs)."""
    chains = []
    for name, entry in techniques().items():
        if grid == "quick" and name not in QUICK_SINGLES:
            continue
        if unavailable_reason(entry) is not None:
            continue
        settings = dict(BENCHMARK_CONFIGS.get(name, {}))
        prior = settings.pop("_after", None)
        step = {"type": name, **settings}
        chains.append(([prior, step], [prior]) if prior else ([step], None))
    return chains


def pair_chains(grid: GridName) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Every first step followed by every second step ((chain, first step) pairs)."""
    return [([first, second], [first]) for first in FIRST_STEPS[grid] for second in SECOND_STEPS[grid]]


def run_oracle(bench: Bench, grid: GridName, shared: list[Measured]) -> OracleRun:
    """Measure the grid on the bench; `shared` (the baselines) count as the oracle's own singles."""
    run = OracleRun(grid=grid)
    started = time.perf_counter()
    seen: set[int] = set()

    def add(candidate: Measured) -> None:
        """Keep each candidate once (the cache hands back shared ones)."""
        if id(candidate) not in seen:
            seen.add(id(candidate))
            run.candidates.append(candidate)

    for candidate in shared:
        add(candidate)
    for first in FIRST_STEPS[grid]:
        add(bench.candidate(chain_name([first]), "oracle", [first]))
    for chain, prefix in single_chains(grid):
        add(bench.candidate(chain_name(chain), "oracle", chain, prefix))
    for chain, prefix in pair_chains(grid):
        add(bench.candidate(chain_name(chain), "oracle", chain, prefix))
    run.wall_s = time.perf_counter() - started + sum(c.work_s for c in shared)
    return run


def best_for(scenario: Scenario, baseline: Measured, candidates: list[Measured]) -> Measured | None:
    """The candidate closest to the scenario's goal: met first, then the smallest shortfall, then the scenario's
    preference (lowest p50 or smallest artifact)."""

    def rank(candidate: Measured) -> tuple[float, float]:
        """Sort key: shortfall to the goal, then the preferred figure."""
        verdict = judge(scenario.criteria, baseline, candidate)
        m = candidate.measurement
        if m is None:
            return float("inf"), float("inf")
        if scenario.prefer == "size":
            value = float(m.size.artifact_bytes or 0) if m.size else float("inf")
        else:
            value = m.runtime.p50_ms if m.runtime else float("inf")
        return verdict.shortfall, value

    pool = [c for c in candidates if c.status == "ok" and c.measurement is not None]
    return min(pool, key=rank) if pool else None
