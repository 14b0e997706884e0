"""Benchmark: `analyze` on every reference model, printing size, FLOPs, latency and memory (never fails on timing)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tools.intake import load_model
from tools.profiling import analyze_model
from tools.reference import REFERENCE_MODELS, reference_model_file

pytestmark = pytest.mark.performance


def test_analyze_every_reference_model_prints_figures(reference_cache: Path, tmp_path: Path) -> None:
    rows = []
    for name in REFERENCE_MODELS:
        started = time.perf_counter()
        path, options = reference_model_file(name, reference_cache)
        built_s = time.perf_counter() - started
        loaded = load_model(path, options, data_dir=tmp_path / "data")
        started = time.perf_counter()
        profile = analyze_model(loaded, latency=True, threads=1, iterations=50, data_dir=tmp_path / "data")
        analyze_s = time.perf_counter() - started
        assert profile.parameters > 0 and profile.latency is not None
        rows.append(
            (
                name,
                profile.format.value,
                profile.parameters,
                profile.flops or 0,
                profile.latency.p50_ms,
                profile.latency.p95_ms,
                profile.latency.peak_rss_mb,
                built_s,
                analyze_s,
            )
        )
    header = (
        f"{'reference':18s} {'format':16s} {'params':>10s} {'MFLOP':>9s} {'p50 ms':>8s} {'p95 ms':>8s} "
        f"{'peak MB':>8s} {'build s':>8s} {'analyze s':>9s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name, fmt, params, flops, p50, p95, peak, built_s, analyze_s in rows:
        print(
            f"{name:18s} {fmt:16s} {params:10d} {flops / 1e6:9.2f} {p50:8.3f} {p95:8.3f} {peak:8.0f} "
            f"{built_s:8.1f} {analyze_s:9.1f}"
        )
