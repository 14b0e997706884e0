"""Tests of deployment targets: datasheet sanity, alias resolution, labelled projections, the pre-flight."""

from __future__ import annotations

import pytest

from tests.tools.evaluation.figures import FIXED_MACHINE, runtime_figures, size_figures
from tools.errors import NotFoundError, ValidationError
from tools.evaluation.runners import RuntimeFigures
from tools.evaluation.size import SizeFigures
from tools.evaluation.targets import (
    THIS_MACHINE,
    known_targets,
    preflight,
    project_latency,
    resolve_target,
)

MACHINE = FIXED_MACHINE


def _size(params: int, dtype: str = "float32", itemsize: int = 4) -> SizeFigures:
    return size_figures(params * itemsize, dtype, itemsize)


def _runtime(p50_ms: float, threads: int = 2) -> RuntimeFigures:
    return runtime_figures(p50_ms, peak_rss_mb=300.0, threads=threads, iterations=50, tail=0.1)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Jetson Orin NX", "jetson-orin-nx-16gb"),
        ("orin nano", "jetson-orin-nano-8gb"),
        ("NVIDIA Jetson Orin Nano Super", "jetson-orin-nano-super-8gb"),
        ("AGX Orin", "jetson-agx-orin-64gb"),
        ("rpi5", "raspberry-pi-5"),
        ("Raspberry Pi 5", "raspberry-pi-5"),
        ("x86 laptop", "x86-laptop"),
        ("this machine", THIS_MACHINE),
    ],
)
def test_goal_text_names_resolve(text: str, name: str) -> None:
    assert resolve_target(text, MACHINE).name == name


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(NotFoundError, match="unknown target 'tpu v5'") as info:
        resolve_target("tpu v5")
    assert "jetson-orin-nx-16gb" in str(info.value) and "raspberry-pi-5" in str(info.value)


def test_jetson_peaks_are_dense_halves_of_the_sparse_headline() -> None:
    targets = known_targets()
    nano, agx = targets["jetson-orin-nano-8gb"], targets["jetson-agx-orin-64gb"]
    assert nano.peak_gflops["int8"] / 1000 == pytest.approx(nano.sparse_int8_tops / 2, rel=0.05)
    assert agx.peak_gflops["int8"] / 1000 == pytest.approx(170 / 2, rel=0.05)  # GPU share of 275 (DLA 105)
    assert agx.peak_gflops["fp32"] / 1000 == pytest.approx(5.3, rel=0.05)
    assert (nano.bandwidth_gbs, agx.bandwidth_gbs, targets["jetson-orin-nx-16gb"].bandwidth_gbs) == (
        68,
        204.8,
        102.4,
    )
    assert all(t.sources for t in targets.values()), "every datasheet target cites its source"


def test_seven_billion_fp16_params_do_not_fit_an_orin_nano() -> None:
    nano = resolve_target("orin nano")
    verdict = preflight(nano, "fp16", params=7_000_000_000)
    assert not verdict.fits
    assert verdict.weight_gb == pytest.approx(14.0)
    assert "14.00 GB of fp16 weights" in verdict.reasons[0] and "6.50 GB usable of 8 GB" in verdict.reasons[0]
    assert preflight(resolve_target("agx orin"), "fp16", params=7_000_000_000).fits
    assert preflight(nano, "int4", params=7_000_000_000).fits, "3.5 GB of int4 weights fit 6.5 GB"


def test_fp8_is_refused_on_orin_but_int8_and_bf16_are_not() -> None:
    nx = resolve_target("Jetson Orin NX")
    verdict = preflight(nx, "fp8", params=1_000_000)
    assert not verdict.fits and "fp8 is not supported on jetson-orin-nx-16gb" in verdict.reasons[0]
    assert preflight(nx, "int8", params=1_000_000).fits
    assert preflight(nx, "bf16", params=1_000_000).fits
    assert not preflight(resolve_target("rpi5"), "bf16", params=1_000_000).fits


def test_missing_runtime_is_a_reason() -> None:
    verdict = preflight(resolve_target("rpi5"), "fp32", params=1000, runtime="tensorrt")
    assert not verdict.fits and "runtime tensorrt is not available on raspberry-pi-5" in verdict.reasons[0]


def test_preflight_takes_exactly_one_size() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        preflight(resolve_target("orin nano"), "fp16")
    with pytest.raises(ValidationError, match="exactly one"):
        preflight(resolve_target("orin nano"), "fp16", params=1, weight_bytes=2)
    stored = preflight(resolve_target("orin nano"), "fp32", size=_size(1_000_000))
    assert stored.weight_gb == pytest.approx(0.004)


def test_projection_elsewhere_is_estimated_and_here_is_measured() -> None:
    size, measured = _size(25_000_000), _runtime(20.0)  # 100 MB of fp32 weights
    here = project_latency(measured, size, 50_000_000, resolve_target("here", MACHINE), MACHINE)
    assert not here.estimated and here.latency_ms == 20.0 and here.label.endswith("(measured)")
    there = project_latency(measured, size, 50_000_000, resolve_target("orin nx"), MACHINE)
    assert there.estimated and "roofline projection" in there.method and there.label.endswith("(estimated)")
    # floor here: 100 MB / 10 GB/s = 10 ms, so this machine runs at 2x its floor; so does the target
    assert there.efficiency == pytest.approx(2.0)
    assert there.latency_ms == pytest.approx(2.0 * there.floor_target.floor_ms)


def test_more_bandwidth_gives_a_lower_projected_latency() -> None:
    size, measured = _size(25_000_000), _runtime(20.0)
    nano = resolve_target("orin nano")
    wider = nano.model_copy(update={"name": "wider", "bandwidth_gbs": 2 * nano.bandwidth_gbs})
    slow = project_latency(measured, size, 50_000_000, nano, MACHINE)
    fast = project_latency(measured, size, 50_000_000, wider, MACHINE)
    assert fast.latency_ms == pytest.approx(slow.latency_ms / 2)
    ranked = [
        project_latency(measured, size, 50_000_000, resolve_target(n), MACHINE).latency_ms
        for n in ("rpi5", "orin nano", "orin nx", "agx orin")
    ]
    assert ranked == sorted(ranked, reverse=True), ranked


def test_projection_needs_the_machine_profile_off_this_machine() -> None:
    with pytest.raises(ValidationError, match="needs this machine's profile"):
        project_latency(_runtime(1.0), _size(1000), None, resolve_target("orin nano"), None)
