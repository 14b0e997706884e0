"""Tests of before/after comparison and the Pareto front over hand-built measurements."""

from __future__ import annotations

import pytest

from tools.errors import ValidationError
from tools.evaluation.comparison import compare, pareto_front
from tools.evaluation.measurement import Measurement
from tools.evaluation.runners import RuntimeFigures
from tools.evaluation.size import DtypeCount, SizeFigures
from tools.evaluation.types import AccuracyResult

_MB = 1024 * 1024


def _m(
    version: str,
    acc: float | None,
    p50_ms: float | None,
    size_mb: float,
    *,
    mse: bool = False,
    batch: int = 1,
) -> Measurement:
    """A hand-built measurement with an optional accuracy (success rate, or action MSE) and runtime."""
    accuracy = None
    if acc is not None:
        accuracy = AccuracyResult(
            level="task", metric="action_mse" if mse else "accuracy", value=acc, higher_is_better=not mse
        )
    runtime = None
    if p50_ms is not None:
        runtime = RuntimeFigures(
            runtime="onnxruntime-cpu",
            runtime_version="onnxruntime test",
            device="cpu",
            threads=1,
            batch=batch,
            iterations=30,
            p50_ms=p50_ms,
            p95_ms=p50_ms,
            p99_ms=p50_ms,
            mean_ms=p50_ms,
            min_ms=p50_ms * 0.9,
            hz=1000 / p50_ms,
            jitter_ms=0.0,
            peak_rss_mb=100.0 + size_mb,
        )
    nbytes = int(size_mb * _MB)
    size = SizeFigures(
        artifact_bytes=nbytes,
        params_by_dtype={"float32": DtypeCount(count=nbytes // 4, bytes=nbytes)},
        total_params=nbytes // 4,
        weight_bytes=nbytes,
        source="onnx",
    )
    return Measurement(version_id=version, technique="test", accuracy=accuracy, runtime=runtime, size=size)


def test_compare_reports_compression_speedup_and_per_sample_time() -> None:
    result = compare(_m("v0", 0.90, 20.0, 100), _m("v1", 0.88, 5.0, 25, batch=4))
    assert result.compression == pytest.approx(4.0) and result.speedup == pytest.approx(4.0)
    assert result.per_sample_ms_after == pytest.approx(1.25) and result.per_sample_ms_before == pytest.approx(
        20.0
    )
    assert result.accuracy.change == pytest.approx(-0.02) and result.accuracy.relative_pct == pytest.approx(
        -2.222, abs=1e-3
    )
    assert not result.accuracy.improved
    assert (result.size_mb_before, result.size_mb_after) == (pytest.approx(100), pytest.approx(25))


def test_compare_follows_the_metric_direction() -> None:
    result = compare(_m("v0", 0.020, 10.0, 10, mse=True), _m("v1", 0.015, 9.0, 10, mse=True))
    assert result.accuracy.change == pytest.approx(-0.005) and result.accuracy.improved


def test_pareto_front_keeps_exactly_the_non_dominated() -> None:
    points = [
        _m("base", 0.90, 20.0, 100),  # most accurate
        _m("fast", 0.85, 5.0, 50),  # fastest and smallest
        _m("worse", 0.80, 6.0, 60),  # dominated by fast on all three
        _m("tie", 0.90, 20.0, 100),  # equal to base: neither dominates the other
        _m("mid", 0.88, 10.0, 40),  # smallest: on the front
        _m("slow", 0.88, 25.0, 100),  # dominated by base
        _m("untimed", 0.99, None, 10),  # lacks latency: skipped, not silently dropped
    ]
    result = pareto_front(points)
    assert result.objectives == ["accuracy", "latency", "size"]
    assert result.front == ["base", "fast", "tie", "mid"]
    assert result.dominated_by == {"worse": "fast", "slow": "base"}
    assert result.skipped == {"untimed": "missing latency"}


def test_pareto_front_for_a_lower_is_better_metric() -> None:
    points = [
        _m("a", 0.010, 10.0, 10, mse=True),
        _m("b", 0.020, 10.0, 10, mse=True),
        _m("c", 0.030, 5.0, 10, mse=True),
    ]
    result = pareto_front(points)
    assert result.front == ["a", "c"] and result.dominated_by == {"b": "a"}


def test_pareto_without_accuracy_uses_latency_and_size() -> None:
    result = pareto_front([_m("a", None, 10.0, 10), _m("b", None, 5.0, 20), _m("c", None, 12.0, 12)])
    assert result.objectives == ["latency", "size"] and result.front == ["a", "b"]


def test_pareto_refuses_duplicate_versions() -> None:
    with pytest.raises(ValidationError, match="distinct version ids"):
        pareto_front([_m("a", 0.9, 1.0, 1), _m("a", 0.8, 2.0, 2)])
