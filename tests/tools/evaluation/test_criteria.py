"""Tests of the criteria check: signed margins, metric direction, estimated latency, and refusals."""

from __future__ import annotations

import pydantic
import pytest

from tests.tools.evaluation.figures import MB, runtime_figures, size_figures
from tools.errors import ValidationError
from tools.evaluation.criteria import Criteria, check_criteria
from tools.evaluation.measurement import Measurement
from tools.evaluation.targets import ProjectedLatency
from tools.evaluation.types import AccuracyResult


def _measurement(
    version: str,
    *,
    size_mb: float,
    p50_ms: float,
    accuracy: AccuracyResult | None = None,
    projections: tuple[ProjectedLatency, ...] = (),
) -> Measurement:
    """A hand-built measurement record (what evaluation would store)."""
    runtime = runtime_figures(p50_ms, peak_rss_mb=200 + size_mb)
    size = size_figures(int(size_mb * MB))
    return Measurement(
        version_id=version,
        technique="test",
        accuracy=accuracy,
        runtime=runtime,
        size=size,
        projections=list(projections),
    )


def _success(value: float) -> AccuracyResult:
    return AccuracyResult(
        level="closed_loop", metric="success_rate", value=value, higher_is_better=True, samples=50
    )


def _mse(value: float) -> AccuracyResult:
    return AccuracyResult(level="task", metric="action_mse", value=value, higher_is_better=False, samples=64)


def _by_name(check: object) -> dict[str, object]:
    return {r.name: r for r in check.results}  # type: ignore[attr-defined]


def test_met_criteria_have_positive_margins() -> None:
    base = _measurement("v0", size_mb=100, p50_ms=20, accuracy=_success(0.90))
    cand = _measurement("v1", size_mb=40, p50_ms=8, accuracy=_success(0.89))
    criteria = Criteria(
        max_size_mb=50, max_latency_ms=10, max_accuracy_drop=0.02, min_speedup=2, min_compression=2
    )
    check = check_criteria(criteria, base, cand)
    results = _by_name(check)
    assert check.passed and not check.missing
    assert results["max_size_mb"].margin == pytest.approx(10)
    assert results["max_latency_ms"].margin == pytest.approx(2) and not results["max_latency_ms"].estimated
    assert results["max_accuracy_drop"].value == pytest.approx(0.01)
    assert results["max_accuracy_drop"].margin == pytest.approx(0.01)
    assert results["min_speedup"].value == pytest.approx(2.5) and results[
        "min_speedup"
    ].margin == pytest.approx(0.5)
    assert results["min_compression"].value == pytest.approx(2.5)


def test_a_drop_of_exactly_the_tolerated_points_passes() -> None:
    # 1.0 - 0.98 is 0.020000000000000018 in floats; "lose at most 2 points" must accept 2 points
    base = _measurement("v0", size_mb=100, p50_ms=20, accuracy=_success(1.0))
    for after, passed in ((0.98, True), (0.97, False)):
        cand = _measurement("v1", size_mb=40, p50_ms=8, accuracy=_success(after))
        result = _by_name(check_criteria(Criteria(max_accuracy_drop=0.02), base, cand))["max_accuracy_drop"]
        assert result.passed is passed, (after, result)


def test_missed_criteria_have_negative_margins() -> None:
    base = _measurement("v0", size_mb=100, p50_ms=20, accuracy=_success(0.90))
    cand = _measurement("v1", size_mb=60, p50_ms=12, accuracy=_success(0.85))
    check = check_criteria(Criteria(max_size_mb=50, max_latency_ms=10, max_accuracy_drop=0.01), base, cand)
    results = _by_name(check)
    assert not check.passed
    assert {r.name for r in check.missing} == {"max_size_mb", "max_latency_ms", "max_accuracy_drop"}
    assert results["max_size_mb"].margin == pytest.approx(-10)
    assert results["max_latency_ms"].margin == pytest.approx(-2)
    assert results["max_accuracy_drop"].margin == pytest.approx(-0.04)


def test_lower_is_better_metrics_count_a_rise_as_a_drop() -> None:
    base = _measurement("v0", size_mb=10, p50_ms=5, accuracy=_mse(0.010))
    worse = _measurement("v1", size_mb=5, p50_ms=3, accuracy=_mse(0.030))
    better = _measurement("v2", size_mb=5, p50_ms=3, accuracy=_mse(0.008))
    criteria = Criteria(max_accuracy_drop=0.01, accuracy_floor=0.02)
    failed = _by_name(check_criteria(criteria, base, worse))
    assert failed["max_accuracy_drop"].value == pytest.approx(0.02) and not failed["max_accuracy_drop"].passed
    assert failed["accuracy_floor"].margin == pytest.approx(-0.01), "for MSE the floor is a ceiling"
    assert check_criteria(criteria, base, better).passed


def test_relative_drop_is_a_percentage_of_the_baseline() -> None:
    base = _measurement("v0", size_mb=10, p50_ms=5, accuracy=_success(0.80))
    cand = _measurement("v1", size_mb=5, p50_ms=3, accuracy=_success(0.78))
    results = _by_name(
        check_criteria(Criteria(max_accuracy_drop=2, accuracy_drop_unit="relative_pct"), base, cand)
    )
    assert (
        results["max_accuracy_drop"].value == pytest.approx(2.5) and results["max_accuracy_drop"].unit == "%"
    )
    assert results["max_accuracy_drop"].margin == pytest.approx(-0.5)


def test_different_accuracy_levels_cannot_be_compared() -> None:
    fidelity = AccuracyResult(level="fidelity", metric="cosine", value=1.0, higher_is_better=True)
    base = _measurement("v0", size_mb=10, p50_ms=5, accuracy=fidelity)
    cand = _measurement("v1", size_mb=5, p50_ms=3, accuracy=_success(0.8))
    with pytest.raises(ValidationError, match="fidelity to the original cosine.*closed-loop success_rate"):
        check_criteria(Criteria(max_accuracy_drop=0.01), base, cand)
    with pytest.raises(ValidationError, match="version v0 has no accuracy figure for closed_loop"):
        check_criteria(Criteria(max_accuracy_drop=0.01, accuracy_level="closed_loop"), base, cand)
    neither = _by_name(check_criteria(Criteria(max_accuracy_drop=0.01, accuracy_level="task"), base, cand))
    assert (
        not neither["max_accuracy_drop"].passed and "no accuracy figure" in neither["max_accuracy_drop"].note
    )


def test_latency_on_another_target_is_the_estimated_projection() -> None:
    projection = ProjectedLatency(
        target="jetson-orin-nx-16gb",
        latency_ms=30.0,
        estimated=True,
        method="roofline projection",
        precision="fp32",
        batch=1,
    )
    base = _measurement("v0", size_mb=10, p50_ms=5)
    cand = _measurement("v1", size_mb=5, p50_ms=3, projections=(projection,))
    criteria = Criteria(max_latency_ms=25, latency_target="jetson-orin-nx-16gb")
    result = _by_name(check_criteria(criteria, base, cand))["max_latency_ms"]
    assert result.estimated and result.value == 30.0 and result.margin == pytest.approx(-5)
    unprojected = _by_name(check_criteria(criteria, base, base))["max_latency_ms"]
    assert (
        not unprojected.passed
        and unprojected.value is None
        and "not measured or projected" in unprojected.note
    )


def test_no_criteria_pass_and_configs_round_trip() -> None:
    base = _measurement("v0", size_mb=10, p50_ms=5)
    assert check_criteria(Criteria(), base, base).passed
    criteria = Criteria(
        max_size_mb=2000, max_latency_ms=100, latency_target="jetson-orin-nx-16gb", max_accuracy_drop=1
    )
    assert Criteria.model_validate_json(criteria.model_dump_json()) == criteria


def test_invalid_criteria_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="percentage"):
        Criteria(max_accuracy_drop=150, accuracy_drop_unit="relative_pct")
    with pytest.raises(pydantic.ValidationError):
        Criteria(max_size_mb=-1)
    with pytest.raises(pydantic.ValidationError):
        Criteria(max_size=10)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="unknown target 'tpu'.*jetson-orin-nx-16gb"):
        Criteria(max_latency_ms=10, latency_target="tpu")


def test_latency_target_aliases_become_canonical_names() -> None:
    assert Criteria(latency_target="Jetson Orin NX").latency_target == "jetson-orin-nx-16gb"
    assert Criteria(latency_target="this machine").latency_target == "this-machine"
