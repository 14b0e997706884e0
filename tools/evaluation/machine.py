"""This machine's measured roofline: achievable memory bandwidth and peak compute, cached per machine.

`machine_profile(data_dir)` measures once (a few seconds) and caches the result as
`<data_dir>/machine/<fingerprint>.json`, where the fingerprint is the CPU model, core count and torch version.
`roofline_floor_ms(weight_bytes, flops, machine)` is the time no implementation can beat on a machine: the
larger of bytes moved / bandwidth and FLOPs / peak compute, with the one that binds.
"""

from __future__ import annotations

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
_SCHEMA_VERSION = 1


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
    int8_gops_1thread: float | None = None
    int8_gops_all: float | None = None
    int8_note: str = ""
    measured_at: datetime
    measure_s: float = Field(description="Time the measurement took.")

    def roof(self, threads: int | None = None) -> Roof:
        """Return this machine's roof for a run at `threads` threads (1 uses the single-thread peaks)."""
        single = threads == 1
        peaks = {"fp32": self.fp32_gflops_1thread if single else self.fp32_gflops_all}
        int8 = self.int8_gops_1thread if single else self.int8_gops_all
        if int8:
            peaks["int8"] = int8
        label = "1 thread" if single else f"{self.all_threads} threads"
        return Roof(
            name=f"this-machine ({label})",
            bandwidth_gbs=self.bandwidth_gbs,
            peak_gflops=peaks,
            note="measured: " + self.bandwidth_method,
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
) -> RooflineFloor:
    """Return max(bytes moved / bandwidth, FLOPs / peak) in ms; bytes moved are at least the weight bytes."""
    if weight_bytes < 0 or activation_bytes < 0 or (flops is not None and flops < 0):
        raise ValidationError(
            f"roofline inputs must be non-negative (weights {weight_bytes}, activations {activation_bytes}, "
            f"flops {flops})"
        )
    roof = machine.roof(threads) if isinstance(machine, MachineProfile) else machine
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


def measure_machine() -> MachineProfile:
    """Measure this machine's bandwidth and fp32/int8 compute now (a few seconds)."""
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
    note = (
        "torch._int_mm (int8 x int8 -> int32) as this torch build runs it; a runtime with VNNI/AMX or dot-"
        "product kernels may go faster"
        if int8_one
        else "int8 matmul could not run here (torch._int_mm missing or without a CPU kernel); no int8 peak"
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
        measured_at=datetime.now(timezone.utc),
        measure_s=time.perf_counter() - started,
    )
    log.info(
        "machine measured",
        extra={
            "bandwidth_gbs": bandwidth,
            "fp32_gflops_all": fp32_all,
            "fp32_gflops_1thread": fp32_one,
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
