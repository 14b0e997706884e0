"""Tests of this machine's measured roofline: measured once and cached, and the roofline floor arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.errors import ValidationError
from tools.evaluation.machine import (
    MachineProfile,
    Roof,
    machine_fingerprint,
    machine_profile,
    roofline_floor_ms,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("machine-data")


@pytest.fixture(scope="module")
def profile(cache_dir: Path) -> MachineProfile:
    """Measure this machine once for the module (a few seconds)."""
    return machine_profile(cache_dir)


def test_measured_figures_are_physical_and_quick(profile: MachineProfile) -> None:
    assert 0.2 < profile.bandwidth_gbs < 2000, profile.bandwidth_gbs
    assert 0.1 < profile.fp32_gflops_1thread < 100_000
    assert 0.1 < profile.fp32_gflops_all < 100_000
    assert profile.physical_cores >= 1 and profile.all_threads == profile.physical_cores
    assert profile.measure_s < 20, f"machine measurement took {profile.measure_s:.1f} s"
    assert profile.int8_note, "the int8 figure must say how it was taken, or why it is missing"


def test_profile_is_cached_under_its_fingerprint(profile: MachineProfile, cache_dir: Path) -> None:
    path = cache_dir / "machine" / f"{machine_fingerprint()}.json"
    assert path.is_file() and profile.fingerprint == machine_fingerprint()
    again = machine_profile(cache_dir)
    assert again == profile, "a second call must read the cache, not measure again"
    assert MachineProfile.model_validate_json(path.read_text()) == profile


def test_an_unreadable_cache_is_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "machine" / f"{machine_fingerprint()}.json"
    path.parent.mkdir()
    path.write_text("{not json")
    fresh = machine_profile(tmp_path)
    assert MachineProfile.model_validate_json(path.read_text()) == fresh


def test_this_machine_roof_uses_single_thread_peaks_for_one_thread(profile: MachineProfile) -> None:
    assert profile.roof(1).peak_gflops["fp32"] == profile.fp32_gflops_1thread
    assert profile.roof().peak_gflops["fp32"] == profile.fp32_gflops_all


_ROOF = Roof(name="test", bandwidth_gbs=10.0, peak_gflops={"fp32": 100.0, "int8": 400.0})


def test_weight_heavy_light_compute_model_is_memory_bound() -> None:
    floor = roofline_floor_ms(100_000_000, 1_000_000, _ROOF)  # 100 MB, 1 MFLOP
    assert floor.bound == "memory"
    assert floor.floor_ms == pytest.approx(10.0) and floor.compute_ms == pytest.approx(0.01)


def test_compute_heavy_model_is_compute_bound() -> None:
    floor = roofline_floor_ms(1_000_000, 10_000_000_000, _ROOF)  # 1 MB, 10 GFLOP
    assert floor.bound == "compute" and floor.floor_ms == pytest.approx(100.0)


def test_floor_follows_bandwidth_and_activations_count() -> None:
    faster = _ROOF.model_copy(update={"bandwidth_gbs": 20.0})
    slow = roofline_floor_ms(100_000_000, None, _ROOF)
    assert roofline_floor_ms(100_000_000, None, faster).floor_ms == pytest.approx(slow.floor_ms / 2)
    assert roofline_floor_ms(
        100_000_000, None, _ROOF, activation_bytes=100_000_000
    ).floor_ms == pytest.approx(2 * slow.floor_ms)


def test_precision_picks_its_peak_or_falls_back() -> None:
    assert roofline_floor_ms(0, 4_000_000_000, _ROOF, precision="int8").floor_ms == pytest.approx(10.0)
    int4 = roofline_floor_ms(0, 4_000_000_000, _ROOF, precision="int4")
    assert int4.peak_precision == "int8"
    fp16 = roofline_floor_ms(0, 4_000_000_000, _ROOF, precision="float16")
    assert fp16.peak_precision == "fp32" and fp16.precision == "fp16"


def test_negative_inputs_are_refused() -> None:
    with pytest.raises(ValidationError, match="non-negative"):
        roofline_floor_ms(-1, 0, _ROOF)
