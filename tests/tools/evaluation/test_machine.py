"""Tests of this machine's measured roofline: measured once and cached, and the roofline floor arithmetic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.tools.evaluation.figures import FIXED_MACHINE
from tools.errors import ValidationError
from tools.evaluation.machine import (
    MachineProfile,
    Roof,
    RuntimePeak,
    machine_fingerprint,
    machine_profile,
    roofline_floor_ms,
    runtime_family,
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
    assert profile.roof(1, "torch-cpu").peak_gflops["fp32"] == profile.fp32_gflops_1thread
    all_cores = max(profile.fp32_gflops_all, profile.fp32_gflops_1thread)
    assert profile.roof(runtime="torch-cpu").peak_gflops["fp32"] == all_cores


def test_onnxruntime_peaks_are_measured_with_its_own_kernels(profile: MachineProfile) -> None:
    ort = {p.precision: p for p in profile.runtime_peaks if p.runtime == "onnxruntime"}
    assert set(ort) == {"fp32", "int8"}, profile.runtime_peaks
    assert "MatMulInteger uint8 x int8" in ort["int8"].kernel and "MatMul fp32" in ort["fp32"].kernel
    assert profile.roof(1, "onnxruntime-cpu").peak_gflops["int8"] == ort["int8"].gflops_1thread
    all_cores = max(ort["int8"].gflops_all, ort["int8"].gflops_1thread)
    assert profile.roof(runtime="onnxruntime-cpu").peak_gflops["int8"] == all_cores


_VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}


def test_onnxruntime_int8_outruns_its_fp32_where_the_cpu_has_vnni(profile: MachineProfile) -> None:
    """MLAS QGEMM uses VNNI (4 int8 MACs where fp32 FMA does 1): its int8 peak is well above its fp32 one."""
    if not _VNNI & set(profile.cpu_flags):
        pytest.skip(f"no VNNI/AMX int8 here (flags {profile.cpu_flags})")
    roof = profile.roof(1, "onnxruntime-cpu")
    assert roof.peak_gflops["int8"] > 2 * roof.peak_gflops["fp32"], roof.peak_gflops


def _best_ms(run: Callable[[], object], seconds: float = 1.0) -> float:
    """Fastest of at least 5 runs and as many as `seconds` allows, ms."""
    run()
    best, began, done = float("inf"), time.perf_counter(), 0
    while done < 5 or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        run()
        best, done = min(best, time.perf_counter() - start), done + 1
    return best * 1e3


def test_an_ort_dynamic_int8_model_is_not_faster_than_its_floor_here(
    profile: MachineProfile, tmp_path: Path
) -> None:
    """A behaviour that holds on any CPU: what ONNX Runtime's dynamic INT8 runs here respects its own floor.

    With torch._int_mm's peak the floor sat about 20x above this model's latency on an AVX-512 VNNI CPU.
    """
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rows, width, layers = 256, 1024, 3
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.03, f"w{i}")
        for i in range(layers)
    ]
    names = ["x"] + [f"h{i}" for i in range(layers - 1)] + ["y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fp32.onnx")
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((rows, width)).astype(np.float32)}
    best_ms = _best_ms(lambda: session.run(None, feed))
    floor = roofline_floor_ms(
        layers * width * width,
        layers * 2 * rows * width * width,
        profile,
        precision="int8",
        threads=1,
        runtime="onnxruntime-cpu",
    )
    # the margin absorbs a peak measured while other work shared the cores; a wrong kernel is 20x off
    assert best_ms >= 0.7 * floor.floor_ms, (best_ms, floor)


_PEAKS = FIXED_MACHINE.model_copy(
    update={
        "int8_gops_1thread": 1.0,
        "int8_gops_all": 2.0,
        "runtime_peaks": [
            RuntimePeak(
                runtime="onnxruntime", precision="fp32", gflops_1thread=40, gflops_all=80, kernel="t"
            ),
            RuntimePeak(
                runtime="onnxruntime", precision="int8", gflops_1thread=20, gflops_all=40, kernel="t"
            ),
        ],
    }
)


@pytest.mark.parametrize(
    ("runtime", "family"),
    [
        ("onnxruntime-cpu", "onnxruntime"),
        ("onnxruntime-cuda", "onnxruntime"),
        ("ORT", "onnxruntime"),
        ("torch-cpu", "torch"),
        ("torch", "torch"),
        ("tensorrt", None),
        (None, None),
    ],
)
def test_runtime_names_map_to_measured_families(runtime: str | None, family: str | None) -> None:
    assert runtime_family(runtime) == family


def test_roof_takes_the_runtimes_own_peaks_and_the_highest_when_unknown() -> None:
    assert _PEAKS.roof(2, "onnxruntime-cpu").peak_gflops == {"fp32": 80, "int8": 40}
    assert _PEAKS.roof(1, "onnxruntime-cpu").peak_gflops == {"fp32": 40, "int8": 20}
    assert _PEAKS.roof(2, "torch-cpu").peak_gflops == {"fp32": 100, "int8": 2}
    assert _PEAKS.roof(1, "torch-cpu").peak_gflops == {"fp32": 50, "int8": 1}
    for unknown in ("tensorrt", None):  # not measured here: the highest peak keeps the floor a lower bound
        assert _PEAKS.roof(2, unknown).peak_gflops == {"fp32": 100, "int8": 40}
    assert "highest" in _PEAKS.roof(2, "tensorrt").name and "onnxruntime" in _PEAKS.roof(2, "ort").name


def test_an_all_core_peak_is_never_below_the_single_thread_one() -> None:
    loaded = _PEAKS.model_copy(update={"fp32_gflops_all": 20.0})  # a run that shared its cores
    assert loaded.roof(2, "torch-cpu").peak_gflops["fp32"] == 50.0


def test_a_runtime_without_a_precision_gets_the_highest_measured_one() -> None:
    no_ort_int8 = _PEAKS.model_copy(update={"runtime_peaks": _PEAKS.runtime_peaks[:1]})
    assert no_ort_int8.roof(2, "onnxruntime-cpu").peak_gflops == {"fp32": 80, "int8": 2}


def test_the_floor_follows_the_runtime_that_ran_the_model() -> None:
    args = (1_000_000, 4_000_000_000)  # 1 MB, 4 GOP: compute-bound everywhere here
    torch_floor = roofline_floor_ms(*args, _PEAKS, precision="int8", runtime="torch-cpu")
    ort_floor = roofline_floor_ms(*args, _PEAKS, precision="int8", runtime="onnxruntime-cpu")
    assert torch_floor.floor_ms == pytest.approx(2000.0) and ort_floor.floor_ms == pytest.approx(100.0)
    assert "onnxruntime" in ort_floor.roof


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
