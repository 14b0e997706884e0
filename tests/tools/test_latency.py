"""Tests of latency measurement in a child process: orderings, memory, failures and the kill on timeout."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import psutil
import pydantic
import pytest
import torch
import torch.nn as nn

from tools.errors import MeasurementError, NotFoundError
from tools.inputs import InputSpec
from tools.intake.types import LoadOptions, Runtime
from tools.latency import LatencyRequest, LatencyResult, measure_latency


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path, script: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.jit.script(module) if script else torch.jit.trace(module.eval(), (example,))
        torch.jit.save(compiled, str(path))
    return path


def _request(path: Path, width: int, **overrides: object) -> LatencyRequest:
    options = LoadOptions(input_specs=(InputSpec(name="x", shape=(1, width)),))
    settings = {"loader": "direct", "threads": 1, "warmup": 3, "iterations": 30, **overrides}
    return LatencyRequest(source=path, options=options, **settings)


@pytest.fixture(scope="module")
def small_and_big(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyResult, LatencyResult]:
    """Measure a 512x512 linear layer (1 MB of weights) and a 4096x4096 one (64 MB, 64x the FLOPs)."""
    folder = tmp_path_factory.mktemp("latency")
    results = []
    for width in (512, 4096):

        class Model(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = nn.Linear(width, width)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.linear(x)

        path = _torchscript(Model(), torch.randn(1, width), folder / f"linear{width}.pt")
        results.append(measure_latency(_request(path, width)))
    return results[0], results[1]


@pytest.mark.integration
def test_a_model_with_64x_the_flops_measures_slower(
    small_and_big: tuple[LatencyResult, LatencyResult],
) -> None:
    small, big = small_and_big
    assert big.p50_ms > small.p50_ms, f"64x FLOPs measured faster: {big.p50_ms} ms vs {small.p50_ms} ms"
    assert big.mean_ms > small.mean_ms


@pytest.mark.integration
def test_peak_memory_follows_the_weights(small_and_big: tuple[LatencyResult, LatencyResult]) -> None:
    small, big = small_and_big
    weights_mb = 4096 * 4097 * 4 / 2**20  # 64 MB
    assert big.peak_rss_mb > small.peak_rss_mb + weights_mb / 2
    assert big.model_rss_mb > weights_mb / 2 > small.model_rss_mb
    assert big.peak_rss_source == "VmHWM"


@pytest.mark.integration
def test_result_statistics_are_consistent(small_and_big: tuple[LatencyResult, LatencyResult]) -> None:
    for result in small_and_big:
        assert result.min_ms <= result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
        assert result.hz == pytest.approx(1000 / result.p50_ms)
        assert result.jitter_ms == pytest.approx(result.p95_ms - result.p50_ms)
        assert (result.threads, result.iterations, result.warmup_iterations) == (1, 30, 3)
        assert result.stopped_by == "iterations" and result.runtime is Runtime.TORCH
        assert result.child_wall_s is not None and result.child_overhead_s is not None
        assert result.child_wall_s >= result.load_s + result.warmup_s + result.measure_s


@pytest.mark.integration
def test_time_cap_stops_a_slow_model_early(tmp_path: Path) -> None:
    path = _torchscript(nn.Linear(4096, 4096), torch.randn(1, 4096), tmp_path / "slow.pt")
    request = _request(path, 4096, iterations=100_000, min_iterations=3, max_measure_s=0.3, warmup=1)
    result = measure_latency(request)
    assert result.stopped_by == "time_cap"
    assert 3 <= result.iterations < 100_000
    assert result.measure_s < 5


@pytest.mark.integration
def test_onnx_models_run_on_onnxruntime_with_fixed_threads(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            nn.Linear(64, 64), (torch.randn(1, 64),), str(path), input_names=["x"], dynamo=False
        )
    result = measure_latency(_request(path, 64, iterations=20))
    assert result.runtime is Runtime.ONNXRUNTIME and result.runtime_version.startswith("onnxruntime")
    assert result.threads == 1 and result.iterations == 20


@pytest.mark.integration
def test_model_output_on_stdout_does_not_corrupt_the_answer(tmp_path: Path) -> None:
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print("model chatter on stdout")
            return x * 2

    path = _torchscript(Noisy(), torch.randn(1, 4), tmp_path / "noisy.pt", script=True)
    result = measure_latency(_request(path, 4, iterations=5, warmup=1))
    assert result.iterations == 5


def _private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder of this test's own, for this process and the children it starts."""
    private = tmp_path / "temp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


@pytest.mark.integration
def test_a_child_that_cannot_load_the_model_raises_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = _private_temp(tmp_path, monkeypatch)
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a TorchScript archive")
    with pytest.raises(MeasurementError) as caught:
        measure_latency(_request(path, 4))
    error = caught.value
    assert "RuntimeError" in error.message and "broken.pt" in error.message
    assert error.detail["returncode"] == 1
    assert error.detail["last_stderr"] in error.message
    assert list(temp.iterdir()) == []  # the child's robopt-latency-* folder is gone


@pytest.mark.integration
def test_timeout_kills_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The killed child cannot clean up: its temp folder (issue 16: `robopt-latency-*`) is removed for it."""
    temp = _private_temp(tmp_path, monkeypatch)

    class Endless(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.eye(64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(1_000_000_000):
                x = torch.tanh(x @ self.weight)
            return x

    path = _torchscript(Endless(), torch.randn(1, 64), tmp_path / "endless.pt", script=True)
    started = time.monotonic()
    with pytest.raises(MeasurementError, match="timed out after 4 s") as caught:
        measure_latency(_request(path, 64, timeout_s=4))
    assert time.monotonic() - started < 4 + 10
    pid = caught.value.detail["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert list(temp.iterdir()) == []


def test_missing_model_fails_before_starting_a_child(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="model not found"):
        measure_latency(_request(tmp_path / "absent.pt", 4))


def test_request_validates_ranges_and_round_trips_through_json(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="threads"):
        LatencyRequest(source=tmp_path, threads=0)
    with pytest.raises(pydantic.ValidationError, match="timeout_s"):
        LatencyRequest(source=tmp_path, timeout_s=0)
    request = _request(tmp_path / "m.pt", 8, seed=3)
    assert LatencyRequest.model_validate_json(request.model_dump_json()) == request


def test_a_stable_estimate_needs_three_runs_that_agree() -> None:
    from tools.latency import stable_estimate

    assert not stable_estimate([1_000_000, 1_010_000])  # two runs are never enough
    assert stable_estimate([1_000_000, 1_010_000, 1_040_000])  # within 5% of the median
    assert not stable_estimate([1_000_000, 1_010_000, 1_200_000])  # one run 20% off: keep timing


class _SimulatedClock:
    """A nanosecond clock that only moves when a simulated run takes its duration: the stop rules of
    `_time_runs` are checked on exact durations, not on how late a loaded machine wakes a sleeping thread."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now_ns = 1_000_000_000
        self._durations = iter(durations_s)
        self.runs = 0

    def __call__(self) -> int:
        return self.now_ns

    def run(self) -> None:
        self.now_ns += int(next(self._durations) * 1e9)
        self.runs += 1


def test_a_model_of_seconds_a_call_stops_once_its_runs_agree() -> None:
    """Past the time cap, runs that agree end timing before min_iterations; runs that disagree do not."""
    from tools.latency import LatencyRequest, _time_runs

    request = LatencyRequest(
        source=Path("slow"), warmup=1, iterations=50, min_iterations=10, max_measure_s=0.2, threads=1
    )
    steady = _SimulatedClock([0.15] * 50)
    warmed, _, samples, _, stopped_by = _time_runs(steady.run, request, clock=steady)
    assert (warmed, stopped_by) == (1, "stable") and 3 <= len(samples) < 10
    noisy_clock = _SimulatedClock([0.05, 0.15] * 20)
    _, _, noisy, _, noisy_stop = _time_runs(noisy_clock.run, request, clock=noisy_clock)
    assert noisy_stop == "time_cap" and len(noisy) == 10  # no agreement: min_iterations still holds


def test_a_slow_model_on_a_loaded_machine_reports_fewer_runs_instead_of_being_killed() -> None:
    """Found on a default-size DDPM policy (32 s a call with the cores shared): runs that never agree within 5%
    kept timing toward min_iterations until the child's 300 s limit killed it with no figure at all."""
    from tools.latency import LatencyRequest, _time_runs

    request = LatencyRequest(
        source=Path("slow"), warmup=2, iterations=50, min_iterations=20, max_measure_s=0.1, threads=1
    )
    clock = _SimulatedClock([0.05, 0.1] * 40)
    deadline = clock.now_ns + int(0.87e9)
    warmed, _, samples, _, stopped_by = _time_runs(clock.run, request, deadline, clock=clock)
    assert stopped_by == "time_cap" and 1 <= len(samples) < 20, (stopped_by, len(samples))
    assert clock.now_ns <= deadline, "no run may start that would end past the deadline"
    assert warmed >= 1
    # the stop is not early either: one more run of the slowest length seen would have crossed the deadline
    assert clock.now_ns + max(samples) >= deadline
