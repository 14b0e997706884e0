"""Benchmark: every available technique on the reference models — size, p50 latency, fidelity (prints figures).

A benchmark, not a timed test: it fails only when a technique breaks on a model format it declares it takes.
Set ROBOPT_UPDATE_EFFECTS=1 to refresh `tools/techniques/measured_effects.json` from this run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evals.technique_benchmark import BENCHMARK_MODELS, benchmark_model, format_rows, write_results

pytestmark = [pytest.mark.performance, pytest.mark.slow]


def test_every_technique_on_the_reference_models(reference_cache: Path, tmp_path: Path) -> None:
    rows = []
    for name in BENCHMARK_MODELS:
        rows.extend(benchmark_model(name, reference_cache, tmp_path / name, threads=1, iterations=30))
    print("\n" + format_rows(rows))
    out_dir = Path(os.environ.get("ROBOPT_BENCHMARK_OUT", tmp_path / "results"))
    written = write_results(
        rows, out_dir, threads=1, update_registry=os.environ.get("ROBOPT_UPDATE_EFFECTS") == "1"
    )
    print(f"results: {written}")
    broken = [row for row in rows if row.status == "refused" and not (row.reason or "").startswith("takes ")]
    assert not broken, "\n".join(f"{row.model} {row.technique}: {row.reason}" for row in broken)
    assert any(row.status == "ok" for row in rows)
    for row in rows:
        if row.status == "ok":
            quarters = [(0, 0), (25, 50), (50, 75), (75, 100), (100, 100)]
            missing = [low for low, high in quarters if not any(low <= p <= high for p in row.progress)]
            assert not missing, f"{row.technique}: no progress report at {missing}% ({row.progress})"
            assert row.progress == sorted(row.progress), (row.technique, "progress went backwards")
