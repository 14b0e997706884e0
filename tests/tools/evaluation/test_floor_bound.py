"""No projection is ever below its target's own roofline floor, on every target x precision x model shape."""

from __future__ import annotations

from typing import get_args

import pytest

from tests.tools.evaluation.figures import FIXED_MACHINE, size_figures
from tools.evaluation.machine import MachineProfile, RuntimePeak, roofline_floor_ms
from tools.evaluation.runners import RUNTIMES, RuntimeFigures, RuntimeName
from tools.evaluation.size import Precision
from tools.evaluation.targets import THIS_MACHINE, known_targets, project_latency

# torch's int8 kernel is 20x slower than ONNX Runtime's here, as torch._int_mm is against MLAS QGEMM with VNNI
MACHINE: MachineProfile = FIXED_MACHINE.model_copy(
    update={
        "int8_gops_1thread": 1.0,
        "int8_gops_all": 2.0,
        "runtime_peaks": [
            RuntimePeak(
                runtime="onnxruntime", precision="fp32", gflops_1thread=60, gflops_all=120, kernel="test"
            ),
            RuntimePeak(
                runtime="onnxruntime", precision="int8", gflops_1thread=20, gflops_all=40, kernel="test"
            ),
        ],
    }
)

# (weight bytes, batch-1 FLOPs): memory- and compute-bound, tiny and large
SHAPES = {
    "tiny, memory-bound": (40_000, 10_000),
    "tiny, compute-bound": (4_000, 200_000_000),
    "large, memory-bound": (4_000_000_000, 8_000_000_000),
    "large, compute-bound": (100_000_000, 4_000_000_000_000),
    "no FLOPs profiled": (6_300_000, None),
}
LATENCIES_MS = (1e-4, 0.05, 3.0, 500.0, 1e5)
PROJECTED = [name for name in known_targets() if name != THIS_MACHINE]


def _measured(p50_ms: float, runtime: RuntimeName, threads: int, batch: int = 1) -> RuntimeFigures:
    """Figures as a runner would report them: only the median and the runtime matter to a projection."""
    return RuntimeFigures(
        runtime=runtime,
        runtime_version="test",
        device="cpu",
        threads=threads,
        batch=batch,
        iterations=10,
        p50_ms=p50_ms,
        p95_ms=p50_ms,
        p99_ms=p50_ms,
        mean_ms=p50_ms,
        min_ms=p50_ms,
        hz=1000 / p50_ms,
        jitter_ms=0.0,
        peak_rss_mb=100.0,
    )


@pytest.mark.parametrize("precision", get_args(Precision))
@pytest.mark.parametrize("name", PROJECTED)
def test_no_projection_is_below_the_targets_own_floor(name: str, precision: Precision) -> None:
    target = known_targets(MACHINE)[name]
    size = size_figures(1000)
    for weight_bytes, flops in SHAPES.values():
        size = size.model_copy(update={"weight_bytes": weight_bytes})
        for batch in (1, 8):
            total = None if flops is None else flops * batch
            floor = roofline_floor_ms(weight_bytes, total, target.roof(), precision=precision).floor_ms
            for p50 in LATENCIES_MS:
                for runtime in RUNTIMES:
                    for threads in (1, 2):
                        measured = _measured(p50, runtime, threads, batch)
                        got = project_latency(measured, size, flops, target, MACHINE, precision=precision)
                        case = f"{name} {precision} {weight_bytes} B {flops} FLOP x{batch} {p50} ms {runtime}"
                        assert got.estimated, case
                        assert got.latency_ms >= floor * (1 - 1e-9), f"{case}: {got.latency_ms} < {floor}"
                        assert (got.floor_error is not None) == (got.efficiency < 1), case


def test_this_machine_is_measured_never_projected() -> None:
    measured = _measured(0.001, "onnxruntime-cpu", 2)
    here = project_latency(
        measured, size_figures(6_300_000), None, known_targets(MACHINE)[THIS_MACHINE], MACHINE
    )
    assert not here.estimated and here.latency_ms == 0.001 and here.floor_error is None


def test_a_latency_below_the_floor_here_is_a_measurement_error_not_a_projection() -> None:
    nano = known_targets()["jetson-orin-nano-8gb"]
    size = size_figures(1_000_000, "int8", 1)  # compute-bound: 2 GOP against 1 MB of weights
    # torch's int8 floor here: 2 GOP / 2 GOP/s = 1000 ms, beaten tenfold by a 100 ms run
    wrong = project_latency(_measured(100.0, "torch-cpu", 2), size, 2_000_000_000, nano, MACHINE)
    assert wrong.efficiency == pytest.approx(0.1)
    assert (
        wrong.floor_error is not None
        and "10x below the compute-bound roofline floor here" in wrong.floor_error
    )
    assert "2 GOP/s int8 peak" in wrong.floor_error and "torch" in wrong.floor_error
    assert wrong.estimated and wrong.latency_ms == pytest.approx(wrong.floor_target.floor_ms)
    assert wrong.method.startswith("target's own roofline floor") and wrong.label.startswith(">= ")
    assert "estimated" in wrong.label
    # ONNX Runtime's own int8 floor here: 2 GOP / 40 GOP/s = 50 ms, so the same 100 ms projects at 2x
    right = project_latency(_measured(100.0, "onnxruntime-cpu", 2), size, 2_000_000_000, nano, MACHINE)
    assert right.floor_error is None and right.efficiency == pytest.approx(2.0)
    assert right.latency_ms == pytest.approx(2.0 * right.floor_target.floor_ms)
    assert "onnxruntime" in right.floor_here.roof


def test_the_demo_int8_vla_projects_at_or_above_the_nanos_memory_floor() -> None:
    """The reference VLA after ORT dynamic INT8 (figures measured on the AMD EPYC): once projected at 0.003 ms.

    With torch._int_mm's peak at 1.4 GOP/s (as the issue's machine measured it) the floor here was 29 ms, the
    efficiency 0.03 and the Nano projection 0.0034 ms, 35x below the Nano's own memory floor of 0.118 ms.
    """
    nano = known_targets()["jetson-orin-nano-8gb"]
    size = size_figures(5_997_578, "int8", 1)
    measured, flops = _measured(0.84, "onnxruntime-cpu", 1), 40_496_640
    memory_floor = 5_997_578 / (68e9 * 0.75) * 1e3
    slow_torch = MACHINE.model_copy(update={"int8_gops_1thread": 1.4, "runtime_peaks": []})
    wrong = project_latency(measured, size, flops, nano, slow_torch)
    assert wrong.efficiency * wrong.floor_target.floor_ms < memory_floor / 30, "the old projection"
    assert wrong.floor_error is not None and wrong.latency_ms == pytest.approx(memory_floor)
    epyc_ort = RuntimePeak(
        runtime="onnxruntime", precision="int8", gflops_1thread=438, gflops_all=877, kernel="MLAS QGEMM"
    )
    epyc = slow_torch.model_copy(update={"bandwidth_gbs": 32.8, "runtime_peaks": [epyc_ort]})
    right = project_latency(measured, size, flops, nano, epyc)
    assert right.floor_error is None and right.efficiency == pytest.approx(4.6, rel=0.05)
    assert right.latency_ms == pytest.approx(0.54, rel=0.05) and right.latency_ms >= memory_floor


def test_the_evals_roofline_column_flags_a_latency_below_its_floor() -> None:
    from evals.summary import _over_floor

    assert _over_floor(3.04, "x") == "3.0x" and _over_floor(None) == "-"
    assert _over_floor(0.04, "x") == "0.0x **floor error**"
