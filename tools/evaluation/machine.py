"""This machine's measured roofline: achievable memory bandwidth and each runtime's peak compute, cached.

`machine_profile(data_dir)` measures once (a few seconds) and caches the result as
`<data_dir>/machine/<fingerprint>.json`, where the fingerprint is the CPU model, core count and torch version.
Peaks are measured per runtime with the kernels that runtime runs: torch.mm and torch._int_mm for torch,
an InferenceSession over one MatMul (MLAS SGEMM) and one MatMulInteger uint8 x int8 (MLAS QGEMM, the kernel
ONNX Runtime's dynamic INT8 models run) for onnxruntime. Runtimes' int8 kernels differ twentyfold (MLAS
uses VNNI; torch._int_mm ran 20x slower on an AVX-512 VNNI EPYC), so a floor taken with another runtime's
peak is no floor at all.
`roofline_floor_ms(weight_bytes, flops, machine, runtime=...)` is the time no implementation can beat on a
machine: the larger of bytes moved / bandwidth and FLOPs / peak compute, with the one that binds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import MeasurementError, ValidationError
from tools.evaluation.size import Precision, normalize_precision
from tools.log import get_logger

log = get_logger("evaluation")

_BANDWIDTH_ARRAY_BYTES = 128 * 1024 * 1024  # well past any last-level cache this code will meet
_MATMUL_SIZE = 1024
_INT8_SIZE = 512
_REPEATS = 5
_MAX_REPEATS = 200
_BUDGET_S = 1.0
_ORT_SIZE = 1024
_ORT_BUDGET_S = 0.3
_SCHEMA_VERSION = 2

RuntimeFamily = Literal["torch", "onnxruntime"]
"""Runtimes whose peaks are measured here; runtime names map onto them by `runtime_family`."""


def runtime_family(runtime: str | None) -> RuntimeFamily | None:
    """Map a runtime name ('onnxruntime-cpu', 'torch-cpu', 'ort', ...) to its measured family, else None."""
    name = (runtime or "").strip().lower()
    if name.startswith(("onnxruntime", "ort")):
        return "onnxruntime"
    if name.startswith("torch"):
        return "torch"
    return None


class RuntimePeak(BaseModel):
    """One runtime's measured dense peak at one precision, at 1 thread and at all physical cores."""

    model_config = ConfigDict(frozen=True)

    runtime: RuntimeFamily
    precision: Precision
    gflops_1thread: float = Field(
        gt=0, description="Best-of-N rate at 1 thread, GFLOP/s (GOP/s for integers)."
    )
    gflops_all: float = Field(gt=0, description="Best-of-N rate at all physical cores.")
    kernel: str = Field(description="What was timed, e.g. 'onnxruntime MatMulInteger uint8 x int8, 1024^3'.")


class Roof(BaseModel):
    """The two ceilings of a roofline: achievable memory bandwidth and peak compute by precision."""

    model_config = ConfigDict(frozen=True)

    name: str
    bandwidth_gbs: float = Field(gt=0, description="Achievable memory bandwidth, GB/s (10^9 bytes).")
    peak_gflops: dict[str, float] = Field(
        description="Dense peak compute by precision, GFLOP/s (GOP/s for integers)."
    )
    note: str = ""

    def peak_for(self, precision: Precision) -> tuple[Precision, float]:
        """Return the precision whose peak applies to `precision` and that peak (falling back to fp32)."""
        fallbacks: dict[str, tuple[str, ...]] = {
            "int4": ("int4", "int8", "fp16", "fp32"),
            "fp8": ("fp8", "fp16", "fp32"),
            "bf16": ("bf16", "fp16", "fp32"),
            "tf32": ("tf32", "fp32"),
            "fp16": ("fp16", "fp32"),
            "int8": ("int8", "fp32"),
        }
        for name in fallbacks.get(precision, (precision, "fp32")):
            if self.peak_gflops.get(name):
                return name, self.peak_gflops[name]  # type: ignore[return-value]
        raise ValidationError(f"roof {self.name} states no peak compute for {precision} or fp32")


class MachineProfile(BaseModel):
    """Measured bandwidth and compute of this machine, with what identifies it."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = _SCHEMA_VERSION
    fingerprint: str = Field(description="cpu model + core count + torch version, as a file-safe name.")
    cpu_model: str
    physical_cores: int
    logical_cpus: int
    memory_gb: float = Field(description="Total RAM, GB (10^9 bytes).")
    torch_version: str
    cpu_flags: list[str] = Field(default_factory=list, description="ISA extensions relevant to precisions.")
    bandwidth_gbs: float = Field(description="Best-of-N achievable copy bandwidth, GB/s (read + write).")
    bandwidth_method: str
    fp32_gflops_1thread: float = Field(description="Best-of-N fp32 matmul rate at 1 thread.")
    fp32_gflops_all: float = Field(description="Best-of-N fp32 matmul rate at `all_threads` threads.")
    all_threads: int
    int8_gops_1thread: float | None = Field(default=None, description="torch._int_mm rate at 1 thread.")
    int8_gops_all: float | None = Field(default=None, description="torch._int_mm rate at `all_threads`.")
    int8_note: str = ""
    runtime_peaks: list[RuntimePeak] = Field(
        default_factory=list,
        description="Peaks per runtime and precision, each with the kernel that runtime runs (torch too).",
    )
    measured_at: datetime
    measure_s: float = Field(description="Time the measurement took.")

    def peak_table(self, threads: int | None = None) -> dict[RuntimeFamily, dict[str, float]]:
        """Return each runtime's measured peaks by precision at `threads` (1: single-thread peaks).

        Above 1 thread a peak is never taken below the single-thread one: more cores cannot lower what a
        kernel can reach, and an all-core run shares its cores with whatever else runs (measured here: 68
        against 439 GOP/s int8 while a benchmark held one core), which would raise the floor above the truth.
        """
        single = threads == 1

        def rate(one: float, every: float) -> float:
            return one if single else max(one, every)

        torch_peaks = {"fp32": rate(self.fp32_gflops_1thread, self.fp32_gflops_all)}
        if self.int8_gops_1thread:
            torch_peaks["int8"] = rate(self.int8_gops_1thread, self.int8_gops_all or 0.0)
        table: dict[RuntimeFamily, dict[str, float]] = {"torch": torch_peaks}
        for peak in self.runtime_peaks:
            table.setdefault(peak.runtime, {})[peak.precision] = rate(peak.gflops_1thread, peak.gflops_all)
        return table

    def roof(self, threads: int | None = None, runtime: str | None = None) -> Roof:
        """Return this machine's roof for a run on `runtime` at `threads` threads (1: single-thread peaks).

        A runtime measured here gets its own peaks; a precision it lacks, and any runtime not measured here
        (or none named), gets the highest peak measured at that precision, so the floor stays a lower bound.
        """
        table = self.peak_table(threads)
        best: dict[str, float] = {}
        for peaks in table.values():
            for precision, rate in peaks.items():
                best[precision] = max(rate, best.get(precision, 0.0))
        family = runtime_family(runtime)
        peaks = {**best, **table.get(family, {})} if family is not None else best
        label = "1 thread" if threads == 1 else f"{self.all_threads} threads"
        source = family if family in table else "highest of the runtimes measured"
        kernels = "; ".join(f"{p.runtime} {p.precision}: {p.kernel}" for p in self.runtime_peaks)
        return Roof(
            name=f"this-machine ({source}, {label})",
            bandwidth_gbs=self.bandwidth_gbs,
            peak_gflops=peaks,
            note="measured: " + self.bandwidth_method + (f"; peaks: {kernels}" if kernels else ""),
        )


class RooflineFloor(BaseModel):
    """The lowest latency a roofline allows for one forward pass, and which ceiling binds."""

    model_config = ConfigDict(frozen=True)

    floor_ms: float
    bound: Literal["memory", "compute"]
    memory_ms: float
    compute_ms: float
    bytes_moved: int
    flops: int | None
    precision: Precision = Field(description="Precision of the model's compute.")
    peak_precision: Precision = Field(description="Precision whose peak was used (fallback when unstated).")
    peak_gflops: float
    bandwidth_gbs: float
    roof: str


def roofline_floor_ms(
    weight_bytes: int,
    flops: int | None,
    machine: MachineProfile | Roof,
    *,
    activation_bytes: int = 0,
    precision: str = "fp32",
    threads: int | None = None,
    runtime: str | None = None,
) -> RooflineFloor:
    """Return max(bytes moved / bandwidth, FLOPs / peak) in ms; bytes moved are at least the weight bytes.

    On a measured machine the peak is `runtime`'s own (see `MachineProfile.roof`); a `Roof` is taken as is.
    """
    if weight_bytes < 0 or activation_bytes < 0 or (flops is not None and flops < 0):
        raise ValidationError(
            f"roofline inputs must be non-negative (weights {weight_bytes}, activations {activation_bytes}, "
            f"flops {flops})"
        )
    roof = machine.roof(threads, runtime) if isinstance(machine, MachineProfile) else machine
    wanted = normalize_precision(precision)
    used, peak = roof.peak_for(wanted)
    moved = weight_bytes + activation_bytes
    memory_ms = moved / (roof.bandwidth_gbs * 1e9) * 1e3
    compute_ms = (flops or 0) / (peak * 1e9) * 1e3
    return RooflineFloor(
        floor_ms=max(memory_ms, compute_ms),
        bound="compute" if compute_ms > memory_ms else "memory",
        memory_ms=memory_ms,
        compute_ms=compute_ms,
        bytes_moved=moved,
        flops=flops,
        precision=wanted,
        peak_precision=used,
        peak_gflops=peak,
        bandwidth_gbs=roof.bandwidth_gbs,
        roof=roof.name,
    )


# --- measurement -----------------------------------------------------------------------------------------


def cpu_model() -> str:
    """Return the CPU model name (from /proc/cpuinfo on Linux, platform elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _cpu_flags() -> list[str]:
    """Return the ISA extensions that matter for precisions (AVX2, AVX-512 VNNI/BF16/FP16, AMX, NEON dot)."""
    wanted = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16"}
    wanted |= {"amx_int8", "asimddp", "asimdhp", "bf16", "i8mm", "sve"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("flags", "features")):
                    return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def machine_fingerprint() -> str:
    """Identify this machine for the cache: cpu model, physical cores, torch version, as a file-safe name."""
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    raw = f"{cpu_model()}|{cores}|{torch.__version__}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu_model()}-{cores}c-torch{torch.__version__}").strip("-")
    return f"{slug[:80]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def _best_seconds(run: Callable[[], object], repeats: int, budget_s: float = _BUDGET_S) -> float:
    """Warm up once, then run at least `repeats` times and until `budget_s` passes; return the fastest run.

    The best of many runs is the figure least disturbed by other processes sharing the cores.
    """
    run()
    best = float("inf")
    began = time.perf_counter()
    done = 0
    while done < repeats or (time.perf_counter() - began < budget_s and done < _MAX_REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        done += 1
    return max(best, 1e-9)


def measure_bandwidth_gbs(array_bytes: int = _BANDWIDTH_ARRAY_BYTES, repeats: int = _REPEATS) -> float:
    """Measure achievable memory bandwidth as the best-of-N copy of a large array (read + write bytes)."""
    source = np.ones(array_bytes // 8, dtype=np.float64)
    target = np.empty_like(source)
    seconds = _best_seconds(lambda: np.copyto(target, source), repeats)
    return 2 * source.nbytes / seconds / 1e9


def measure_matmul_gflops(threads: int, size: int = _MATMUL_SIZE, repeats: int = _REPEATS) -> float:
    """Measure the fp32 matmul rate (2*n^3 FLOPs a product) at `threads` threads, best of N."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        seconds = _best_seconds(lambda: torch.mm(a, b), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def measure_int8_gops(threads: int, size: int = _INT8_SIZE, repeats: int = _REPEATS) -> float | None:
    """Measure the int8 matmul rate with torch._int_mm (int32 accumulate), or None where it cannot run."""
    mm = getattr(torch, "_int_mm", None)
    if mm is None:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        b = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        seconds = _best_seconds(lambda: mm(a, b), repeats)
    except (RuntimeError, NotImplementedError):
        return None
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def _ort_matmul_model(precision: Literal["fp32", "int8"], size: int) -> bytes:
    """Build a one-node ONNX graph: fp32 MatMul, or MatMulInteger uint8 x int8 -> int32.

    MatMulInteger with an activation zero point is what quantize_dynamic emits (ORT fuses it with the
    DynamicQuantizeLinear before it into the same MLAS QGEMM). The weight is an initializer, so ONNX Runtime
    pre-packs it as it does a real model's weights.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        initializers, a_type, y_type = [weight], TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "b")
        a_zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")
        b_zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "b_zero")
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["y"])
        initializers, a_type, y_type = [weight, a_zero, b_zero], TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph(
        [node],
        f"peak_{precision}",
        [helper.make_tensor_value_info("a", a_type, [size, size])],
        [helper.make_tensor_value_info("y", y_type, [size, size])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_ort_gops(
    precision: Literal["fp32", "int8"],
    threads: int,
    size: int = _ORT_SIZE,
    repeats: int = _REPEATS,
    budget_s: float = _ORT_BUDGET_S,
) -> float | None:
    """Measure ONNX Runtime's CPU matmul rate at `precision` and `threads` intra-op threads, best of N.

    None where onnxruntime is missing or cannot run the graph (logged, with the reason).
    """
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            _ort_matmul_model(precision, size), options, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(1)
        if precision == "fp32":
            feed = {"a": rng.standard_normal((size, size)).astype(np.float32)}
        else:
            feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8)}
        seconds = _best_seconds(lambda: session.run(None, feed), repeats, budget_s)
    except (ImportError, RuntimeError, ValueError) as error:
        log.warning(
            "onnxruntime peak not measured",
            extra={"precision": precision, "threads": threads, "error": str(error)},
        )
        return None
    return 2 * size**3 / seconds / 1e9


def _measure_ort_at(precision: Literal["fp32", "int8"], threads: int) -> float | None:
    """Measure ONNX Runtime's `precision` matmul rate at `threads` threads, default size and budget."""
    return measure_ort_gops(precision, threads)


def _runtime_peak(
    runtime: RuntimeFamily,
    precision: Precision,
    kernel: str,
    measure: Callable[[int], float | None],
    threads: int,
) -> RuntimePeak | None:
    """Measure one runtime's peak at 1 thread and at `threads`; None when either run is impossible here."""
    one = measure(1)
    if not one:
        return None
    every = measure(threads) if threads > 1 else one
    if not every:
        return None
    return RuntimePeak(
        runtime=runtime, precision=precision, gflops_1thread=one, gflops_all=every, kernel=kernel
    )


def measure_machine() -> MachineProfile:
    """Measure this machine's bandwidth and each runtime's fp32/int8 compute now (a few seconds)."""
    started = time.perf_counter()
    threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        bandwidth = measure_bandwidth_gbs()
        fp32_one = measure_matmul_gflops(1)
        fp32_all = measure_matmul_gflops(threads) if threads > 1 else fp32_one
        int8_one = measure_int8_gops(1)
        int8_all = measure_int8_gops(threads) if threads > 1 and int8_one else int8_one
    except MemoryError:
        raise MeasurementError(
            f"not enough memory for the {_BANDWIDTH_ARRAY_BYTES >> 20} MiB bandwidth arrays"
        ) from None
    peaks = [
        RuntimePeak(
            runtime="torch",
            precision="fp32",
            gflops_1thread=fp32_one,
            gflops_all=fp32_all,
            kernel=f"torch.mm fp32, {_MATMUL_SIZE}^3",
        )
    ]
    if int8_one and int8_all:
        peaks.append(
            RuntimePeak(
                runtime="torch",
                precision="int8",
                gflops_1thread=int8_one,
                gflops_all=int8_all,
                kernel=f"torch._int_mm int8 x int8 -> int32, {_INT8_SIZE}^3",
            )
        )
    ort_kernels: dict[Literal["fp32", "int8"], str] = {
        "fp32": f"onnxruntime MatMul fp32 (MLAS SGEMM), {_ORT_SIZE}^3, weight pre-packed",
        "int8": f"onnxruntime MatMulInteger uint8 x int8 -> int32 (MLAS QGEMM, as quantize_dynamic emits), "
        f"{_ORT_SIZE}^3, weight pre-packed",
    }
    for precision, kernel in ort_kernels.items():
        peak = _runtime_peak(
            "onnxruntime", precision, kernel, functools.partial(_measure_ort_at, precision), threads
        )
        if peak is not None:
            peaks.append(peak)
    measured = ", ".join(f"{p.runtime} {p.precision}" for p in peaks)
    note = (
        "int8_gops_* are torch._int_mm (int8 x int8 -> int32) as this torch build runs it; every runtime's "
        f"own int8 kernel is in runtime_peaks (measured: {measured})"
        if int8_one
        else "torch._int_mm could not run here (missing or without a CPU kernel); runtime_peaks holds what "
        f"was measured ({measured})"
    )
    profile = MachineProfile(
        fingerprint=machine_fingerprint(),
        cpu_model=cpu_model(),
        physical_cores=threads,
        logical_cpus=os.cpu_count() or threads,
        memory_gb=psutil.virtual_memory().total / 1e9,
        torch_version=torch.__version__,
        cpu_flags=_cpu_flags(),
        bandwidth_gbs=bandwidth,
        bandwidth_method=f"numpy copy of {_BANDWIDTH_ARRAY_BYTES >> 20} MiB float64, best of at least "
        f"{_REPEATS} runs within {_BUDGET_S:g} s, "
        "bytes read + written",
        fp32_gflops_1thread=fp32_one,
        fp32_gflops_all=fp32_all,
        all_threads=threads,
        int8_gops_1thread=int8_one,
        int8_gops_all=int8_all,
        int8_note=note,
        runtime_peaks=peaks,
        measured_at=datetime.now(timezone.utc),
        measure_s=time.perf_counter() - started,
    )
    log.info(
        "machine measured",
        extra={
            "bandwidth_gbs": bandwidth,
            "fp32_gflops_all": fp32_all,
            "fp32_gflops_1thread": fp32_one,
            "peaks": {f"{p.runtime} {p.precision}": round(p.gflops_all, 1) for p in peaks},
            "measure_s": profile.measure_s,
        },
    )
    return profile


def machine_profile(data_dir: Path, refresh: bool = False) -> MachineProfile:
    """Return this machine's profile from `<data_dir>/machine/<fingerprint>.json`; measure if absent."""
    path = Path(data_dir) / "machine" / f"{machine_fingerprint()}.json"
    if path.is_file() and not refresh:
        try:
            cached = MachineProfile.model_validate_json(path.read_text())
            if cached.schema_version == _SCHEMA_VERSION:
                return cached
        except ValueError:
            log.warning("unreadable machine cache; measuring again", extra={"path": str(path)})
    profile = measure_machine()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp-{os.getpid()}")
    staging.write_text(profile.model_dump_json(indent=2))
    os.replace(staging, path)
    return profile
