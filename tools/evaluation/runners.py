"""Measured latency and memory of a model on a named runtime, in a separate process, at a chosen batch size.

`measure_runtime(path, options, runtime=...)` runs every runtime through `tools.latency.measure_latency`
(child process, warm-up, fixed threads; on CUDA the model moves to the GPU and each run is synchronized);
a batch above 1 is measured by giving the child input specs whose first dimension is the batch. The CUDA
runtimes raise MeasurementError("no CUDA device ...") where CUDA is absent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, computed_field

from tools.errors import MeasurementError, NotFoundError, ValidationError
from tools.inputs import InputSpec
from tools.intake.types import LoadOptions
from tools.latency import (
    DEFAULT_MAX_MEASURE_S,
    DEFAULT_TIMEOUT_S,
    LatencyRequest,
    LatencyResult,
    default_threads,
    measure_latency,
)
from tools.log import get_logger

log = get_logger("evaluation")

RuntimeName = Literal["torch-cpu", "onnxruntime-cpu", "torch-cuda", "onnxruntime-cuda"]
RUNTIMES: tuple[RuntimeName, ...] = ("torch-cpu", "onnxruntime-cpu", "torch-cuda", "onnxruntime-cuda")


class RuntimeFigures(BaseModel):
    """Latency percentiles and memory of one model on one runtime, measured here (never estimated)."""

    model_config = ConfigDict(frozen=True)

    runtime: RuntimeName
    runtime_version: str = Field(description="e.g. 'torch 2.13.0', 'onnxruntime 1.31.0'.")
    device: str = Field(description="'cpu' or the CUDA device's name.")
    threads: int = Field(description="Intra-op CPU threads.")
    batch: int = Field(ge=1, description="Samples per forward pass (the inputs' first dimension).")
    iterations: int = Field(description="Timed runs.")
    stopped_by: Literal["iterations", "time_cap", "stable"] = Field(
        default="iterations", description="Why timing stopped (see tools.latency.LatencyResult.stopped_by)."
    )
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float = Field(description="Fastest run: the figure least disturbed by other processes.")
    hz: float = Field(description="Forward passes a second at the median: 1000 / p50_ms.")
    jitter_ms: float = Field(description="p95_ms - p50_ms.")
    peak_rss_mb: float = Field(description="Peak resident memory of the measuring process (VmHWM).")
    model_rss_mb: float | None = Field(default=None, description="RSS growth from loading the model.")
    gpu_peak_mb: float | None = Field(default=None, description="Peak CUDA memory allocated (torch-cuda).")
    estimated: Literal[False] = Field(default=False, description="Always False: these are measured.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def per_sample_ms(self) -> float:
        """Median latency per sample: p50_ms / batch."""
        return self.p50_ms / self.batch


def cuda_unavailable_reason(runtime: RuntimeName) -> str | None:
    """Return why `runtime` cannot run on a GPU here, or None when it can (CPU runtimes always can)."""
    if not runtime.endswith("-cuda"):
        return None
    if runtime == "torch-cuda":
        if not torch.cuda.is_available():
            return "no CUDA device: torch.cuda.is_available() is False (CPU-only torch or no GPU)"
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return f"no CUDA device for ONNX Runtime: CUDAExecutionProvider is not among {providers}"
    return None


def measure_runtime(
    path: Path,
    options: LoadOptions | None = None,
    runtime: RuntimeName = "torch-cpu",
    *,
    threads: int | None = None,
    batch: int = 1,
    warmup: int = 5,
    iterations: int = 50,
    max_measure_s: float = DEFAULT_MAX_MEASURE_S,
    data_dir: Path | None = None,
    loader: Literal["intake", "direct"] = "intake",
    seed: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RuntimeFigures:
    """Measure the model at `path` on `runtime` in a child process: warm-up, fixed threads, percentiles."""
    if runtime not in RUNTIMES:
        raise ValidationError(f"unknown runtime {runtime!r}", hint=f"use one of: {', '.join(RUNTIMES)}")
    if batch < 1:
        raise ValidationError(f"batch must be at least 1, got {batch}")
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise NotFoundError(f"model not found: {source}", hint="give an existing model file or directory")
    options = options or LoadOptions()
    engine = _check_engine(source, runtime)
    reason = cuda_unavailable_reason(runtime)
    if reason:
        raise MeasurementError(
            f"cannot measure on {runtime}: {reason}",
            hint="measure on torch-cpu or onnxruntime-cpu here, or run on a machine with an NVIDIA GPU "
            "and a CUDA build of torch / onnxruntime-gpu",
            detail={"runtime": runtime},
        )
    if batch > 1:
        options = options.model_copy(update={"input_specs": _batched_specs(source, options, batch, data_dir)})
    request = LatencyRequest(
        source=source,
        options=options,
        data_dir=data_dir,
        loader=loader,
        threads=threads or default_threads(),
        warmup=warmup,
        iterations=iterations,
        min_iterations=min(5, iterations),
        max_measure_s=max_measure_s,
        seed=seed,
        timeout_s=timeout_s,
    )
    if runtime.endswith("-cuda"):
        request = request.model_copy(update={"device": "cuda"})
    figures = _from_latency(measure_latency(request), runtime, batch)
    if figures.runtime_version.split()[0] != engine:
        raise MeasurementError(f"{source.name} ran on {figures.runtime_version}, not on {runtime}")
    log.info(
        "runtime measured",
        extra={"source": str(source), "runtime": runtime, "batch": batch, "p50_ms": figures.p50_ms},
    )
    return figures


def _check_engine(source: Path, runtime: RuntimeName) -> str:
    """Return the engine ('torch' or 'onnxruntime') the artifact runs on; refuse a mismatching runtime."""
    from tools.intake.detect import detect_format
    from tools.intake.types import ModelFormat

    fmt = detect_format(source).format
    engine = (
        "onnxruntime" if fmt in (ModelFormat.ONNX, ModelFormat.TF_SAVEDMODEL, ModelFormat.KERAS) else "torch"
    )
    wanted = runtime.rsplit("-", 1)[0]
    if engine != wanted:
        raise ValidationError(
            f"{source.name} is a {fmt.value} artifact, which runs on {engine}, not on {runtime}",
            hint=f"measure it on {engine}-cpu or {engine}-cuda, or export it first (ONNX export for "
            "onnxruntime)",
        )
    return engine


def _batched_specs(
    source: Path, options: LoadOptions, batch: int, data_dir: Path | None
) -> tuple[InputSpec, ...]:
    """Return the input specs with their first (batch) dimension set to `batch`."""
    specs = list(options.input_specs)
    if not specs:  # the loader infers specs; load once here to learn them
        from tools.intake import load_model

        with tempfile.TemporaryDirectory(prefix="robopt-specs-") as scratch:
            specs = load_model(source, options, data_dir or Path(scratch)).input_specs
    batched = []
    for spec in specs:
        if len(spec.shape) == 0 or spec.shape[0] != 1:
            raise ValidationError(
                f"input {spec.name!r} has shape {spec.shape}; batching needs a leading batch dimension of 1",
                hint="give input specs for batch 1 (NAME:1x...:DTYPE)",
            )
        batched.append(spec.model_copy(update={"shape": (batch, *spec.shape[1:])}))
    return tuple(batched)


def _from_latency(result: LatencyResult, runtime: RuntimeName, batch: int) -> RuntimeFigures:
    """Turn tools.latency's result into RuntimeFigures."""
    return RuntimeFigures(
        runtime=runtime,
        runtime_version=result.runtime_version,
        device=result.device,
        threads=result.threads,
        batch=batch,
        iterations=result.iterations,
        stopped_by=result.stopped_by,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        mean_ms=result.mean_ms,
        min_ms=result.min_ms,
        hz=result.hz,
        jitter_ms=result.jitter_ms,
        peak_rss_mb=result.peak_rss_mb,
        model_rss_mb=result.model_rss_mb,
        gpu_peak_mb=result.gpu_peak_mb,
    )
