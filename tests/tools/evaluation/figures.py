"""Hand-built evaluation records for tests: a machine profile with fixed figures, runtime and size figures."""

from __future__ import annotations

from datetime import datetime, timezone

from tools.evaluation.machine import MachineProfile
from tools.evaluation.runners import RuntimeFigures
from tools.evaluation.size import DtypeCount, SizeFigures

MB = 1024 * 1024

# A machine record as machine_profile() would store it (figures fixed so the arithmetic is checkable).
FIXED_MACHINE = MachineProfile(
    fingerprint="test-cpu",
    cpu_model="Test CPU",
    physical_cores=2,
    logical_cpus=2,
    memory_gb=16.0,
    torch_version="test",
    bandwidth_gbs=10.0,
    bandwidth_method="fixed for the test",
    fp32_gflops_1thread=50.0,
    fp32_gflops_all=100.0,
    all_threads=2,
    measured_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
    measure_s=0.0,
)


def runtime_figures(
    p50_ms: float, *, peak_rss_mb: float, threads: int = 1, iterations: int = 30, tail: float = 0.2
) -> RuntimeFigures:
    """Torch-CPU figures around `p50_ms`: p95 = p50·(1+tail), p99 = p50·(1.1+tail), jitter = p50·tail."""
    return RuntimeFigures(
        runtime="torch-cpu",
        runtime_version="torch test",
        device="cpu",
        threads=threads,
        batch=1,
        iterations=iterations,
        p50_ms=p50_ms,
        p95_ms=p50_ms * (1 + tail),
        p99_ms=p50_ms * (1.1 + tail),
        mean_ms=p50_ms,
        min_ms=p50_ms * 0.9,
        hz=1000 / p50_ms,
        jitter_ms=p50_ms * tail,
        peak_rss_mb=peak_rss_mb,
    )


def size_figures(nbytes: int, dtype: str = "float32", itemsize: int = 4) -> SizeFigures:
    """An artifact of `nbytes` holding only weights of one dtype."""
    return SizeFigures(
        artifact_bytes=nbytes,
        params_by_dtype={dtype: DtypeCount(count=nbytes // itemsize, bytes=nbytes)},
        total_params=nbytes // itemsize,
        weight_bytes=nbytes,
        source="torch",
    )
