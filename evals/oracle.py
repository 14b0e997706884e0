"""The exhaustive oracle: every chain of a grid, each applied and measured on the bench; the best it finds for
a goal is what a blind search could give.

A grid is a selection over the one search space the planner searches too (`tools.techniques.search_space`):
which techniques, how many steps, how many configs per step. A chain reuses its prefix's stored version, so the
oracle's cost counts each piece of work once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from evals.bench import Bench, Measured
from evals.judge import judge
from evals.scenarios import GridName, Scenario
from evals.technique_benchmark import BENCHMARK_CONFIGS
from tools.techniques.search_space import candidate_chains


@dataclass(frozen=True)
class GridSelection:
    """A grid as a selection over the one search space (`tools.techniques.search_space`)."""

    techniques: tuple[str, ...] | None
    """The techniques it draws on (None: every available one)."""
    max_steps: int
    variants_per_step: int
    """Configs per step: the defaults (the benchmark's settings), then one declared range value at a time."""
    max_chains: int
    """The most chains it may hold from a torch source (a unit test holds it to this)."""


GRIDS: dict[GridName, GridSelection] = {
    "standard": GridSelection(None, max_steps=2, variants_per_step=1, max_chains=120),
    "small": GridSelection(
        (
            "structured_prune",
            "low_rank",
            "depth_prune",
            "distill",
            "ort_int8_dynamic",
            "ort_int8_static",
            "ort_matmul_4bits",
            "onnx_fp16",
            "torchao_int8_weight_only",
        ),
        max_steps=2,
        variants_per_step=1,
        max_chains=30,
    ),
    # the performance suite runs this one: structured pruning, each ONNX Runtime quantization alone and after it
    "quick": GridSelection(
        ("structured_prune", "ort_int8_dynamic", "ort_int8_static", "ort_matmul_4bits"),
        max_steps=2,
        variants_per_step=1,
        max_chains=8,
    ),
}
BASE_CONFIGS: dict[str, dict[str, Any]] = {
    name: {key: value for key, value in settings.items() if key != "_after"}
    for name, settings in BENCHMARK_CONFIGS.items()
}
"""The technique benchmark's settings as each step's base config (distillation follows a structural step in the
space itself, so its `_after` is not needed)."""


def grid_chains(grid: GridName, source_format: str) -> list[list[dict[str, Any]]]:
    """The grid's chains from `source_format`, as the search space builds them."""
    selection = GRIDS[grid]
    return candidate_chains(
        source_format,
        max_steps=selection.max_steps,
        variants_per_step=selection.variants_per_step,
        only=selection.techniques,
        base_configs=BASE_CONFIGS,
    ).chains


def chain_label(chain: list[dict[str, Any]]) -> str:
    """The chain's name with each step's settings beyond the base config ('ort_matmul_4bits(block_size=16)')."""
    parts = []
    for step in chain:
        base = BASE_CONFIGS.get(str(step["type"]), {})
        extra = ",".join(f"{k}={v}" for k, v in step.items() if k != "type" and base.get(k) != v)
        parts.append(f"{step['type']}({extra})" if extra else str(step["type"]))
    return "+".join(parts)


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
            "selection": {
                "techniques": GRIDS[self.grid].techniques or "every available",
                "max_steps": GRIDS[self.grid].max_steps,
                "variants_per_step": GRIDS[self.grid].variants_per_step,
            },
            "candidates": len(self.candidates),
            "measured": len(self.measured),
            "wall_s": round(self.wall_s, 1),
            "work_s": round(self.work_s, 1),
            "rows": rows,
        }


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
    # shortest first, so every longer chain continues from its cached prefix
    for chain in grid_chains(grid, bench.original.format):
        add(bench.candidate(chain_label(chain), "oracle", chain, chain[:-1] or None))
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
