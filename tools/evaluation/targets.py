"""Deployment targets: typed datasheet profiles, roofline latency projection, memory/precision pre-flight.

Only "this-machine" is measured (tools.evaluation.machine). Every other target's latency is a projection:
this machine's measured latency times (roofline floor on the target / roofline floor here), i.e. this
machine's measured efficiency applied to the target's floor, always returned with `estimated=True` and the
method. The floor here uses the peaks of the runtime that measured the latency. A projection is never below
the target's own floor: a latency measured faster than the floor here means that floor is wrong, which is
reported as `floor_error`, and the target's floor itself is given as the (lower-bound) estimate.
Datasheet figures are dense peaks (NVIDIA quotes INT8 TOPS with 2:4 structured sparsity; dense is
half) and theoretical DRAM bandwidth, of which an achievable fraction (stated per target) is used.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import NotFoundError, ValidationError
from tools.evaluation.machine import MachineProfile, Roof, RooflineFloor, roofline_floor_ms
from tools.evaluation.runners import RuntimeFigures
from tools.evaluation.size import BYTES_PER_ELEMENT, Precision, SizeFigures, normalize_precision

THIS_MACHINE = "this-machine"
_THIS_MACHINE_ALIASES = ("this machine", "local", "here", "localhost", "this computer")
_GB = 1e9
_JETSON_DATASHEET = (
    "NVIDIA Jetson Orin Nano / Orin NX / AGX Orin series datasheets and the Jetson Orin technical brief "
    "(developer.nvidia.com/embedded/jetson-modules)"
)
_ORIN_PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32", "fp16", "bf16", "int8", "int4")
_ORIN_RUNTIMES = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
_ORIN_NOTES = (
    "Ampere GPU (GA10B): tensor cores run fp16, bf16, tf32 and int8; no fp8 (that needs Ada/Hopper). int4 "
    "means weight-only int4 (dequantized to fp16 in the kernel, e.g. TensorRT-LLM, llama.cpp, MLC); its "
    "compute is taken at the fp16 peak.",
    "Peaks are the GPU's dense figures derived from the datasheet's sparse INT8 TOPS (dense = sparse / 2); "
    "DLA engines are left out (TensorRT-only, a subset of layers).",
    "CPU and GPU share the LPDDR5; usable memory = total minus about 1.5 GB for JetPack (Ubuntu, no "
    "desktop).",
)


class TargetProfile(BaseModel):
    """A deployment target: memory, bandwidth, dense peak compute by precision, precisions, runtimes."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Canonical id, e.g. 'jetson-orin-nx-16gb'.")
    display_name: str
    aliases: tuple[str, ...] = Field(default=(), description="Other names goal text may use.")
    device: str = Field(description="Processor summary.")
    memory_gb: float = Field(gt=0, description="Total memory, GB.")
    usable_memory_gb: float = Field(gt=0, description="Memory a model may use: total minus OS reserve.")
    bandwidth_gbs: float = Field(
        gt=0, description="Theoretical DRAM bandwidth (datasheet), or measured here."
    )
    achievable_bandwidth_fraction: float = Field(
        gt=0, le=1, description="Share of bandwidth_gbs that real copies reach (1.0 when measured)."
    )
    peak_gflops: dict[str, float] = Field(description="Dense peak by precision, GFLOP/s or GOP/s.")
    sparse_int8_tops: float | None = Field(
        default=None, description="Headline sparse INT8 TOPS, as marketed."
    )
    precisions: tuple[Precision, ...] = Field(description="Precisions the target runs natively.")
    runtimes: tuple[str, ...]
    runtime_overhead_gb: float = Field(
        ge=0, description="Memory the runtime takes before any weight (CUDA context, TensorRT workspace)."
    )
    measured: bool = Field(default=False, description="True only for this machine.")
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def roof(self, threads: int | None = None) -> Roof:
        """Return the roofline ceilings: achievable bandwidth and dense peaks."""
        return Roof(
            name=self.name,
            bandwidth_gbs=self.bandwidth_gbs * self.achievable_bandwidth_fraction,
            peak_gflops=dict(self.peak_gflops),
            note="measured" if self.measured else "datasheet, estimated",
        )


def _jetson(
    name: str,
    display: str,
    aliases: tuple[str, ...],
    memory_gb: float,
    bandwidth: float,
    sm: int,
    clock_ghz: float,
    sparse_tops: float,
    device: str,
) -> TargetProfile:
    """Build a Jetson Orin profile; GPU peaks follow from SMs x clock.

    Each Ampere SM has 128 fp32 lanes and tensor cores doing 2048 dense int8 MACs a clock (fp16: half).
    """
    fp32 = sm * 128 * 2 * clock_ghz
    int8 = sm * 2048 * 2 * clock_ghz
    return TargetProfile(
        name=name,
        display_name=display,
        aliases=aliases,
        device=device,
        memory_gb=memory_gb,
        usable_memory_gb=memory_gb - 1.5,
        bandwidth_gbs=bandwidth,
        achievable_bandwidth_fraction=0.75,
        peak_gflops={"fp32": fp32, "tf32": int8 / 4, "fp16": int8 / 2, "bf16": int8 / 2, "int8": int8},
        sparse_int8_tops=sparse_tops,
        precisions=_ORIN_PRECISIONS,
        runtimes=_ORIN_RUNTIMES,
        runtime_overhead_gb=0.8,
        notes=_ORIN_NOTES
        + (
            f"GPU: {sm} SMs at {clock_ghz * 1000:.0f} MHz -> {fp32 / 1000:.2f} TFLOPS fp32 (CUDA cores), "
            f"{int8 / 1000:.1f} TOPS int8 dense on the tensor cores; the module's {sparse_tops:g} TOPS "
            "headline is sparse INT8 (GPU + DLA where present).",
            "Achievable bandwidth assumed 75% of theoretical (typical STREAM efficiency on LPDDR5).",
        ),
        sources=(_JETSON_DATASHEET,),
    )


def _builtin_targets() -> dict[str, TargetProfile]:
    """The datasheet targets (this machine is added from its measured profile)."""
    profiles = [
        _jetson(
            "jetson-orin-nano-8gb",
            "NVIDIA Jetson Orin Nano 8GB",
            ("orin nano", "jetson orin nano", "orin nano 8gb", "orin-nano"),
            8,
            68,
            8,
            0.625,
            40,
            "1024-core Ampere GPU (32 tensor cores), 6-core Cortex-A78AE, 8 GB 128-bit LPDDR5",
        ),
        _jetson(
            "jetson-orin-nano-super-8gb",
            "NVIDIA Jetson Orin Nano Super 8GB (JetPack 6.1+ MAXN SUPER mode)",
            ("orin nano super", "jetson orin nano super"),
            8,
            102,
            8,
            1.02,
            67,
            "1024-core Ampere GPU at 1020 MHz, 6-core Cortex-A78AE, 8 GB LPDDR5 at 102 GB/s",
        ),
        _jetson(
            "jetson-orin-nx-16gb",
            "NVIDIA Jetson Orin NX 16GB",
            ("orin nx", "jetson orin nx", "orin nx 16gb", "orin-nx"),
            16,
            102.4,
            8,
            0.918,
            100,
            "1024-core Ampere GPU (32 tensor cores), 8-core Cortex-A78AE, 2 DLA, 16 GB 128-bit LPDDR5",
        ),
        _jetson(
            "jetson-agx-orin-64gb",
            "NVIDIA Jetson AGX Orin 64GB",
            ("agx orin", "jetson agx orin", "agx orin 64gb", "orin agx"),
            64,
            204.8,
            16,
            1.3,
            275,
            "2048-core Ampere GPU (64 tensor cores), 12-core Cortex-A78AE, 2 DLA, 64 GB 256-bit LPDDR5",
        ),
        TargetProfile(
            name="raspberry-pi-5",
            display_name="Raspberry Pi 5 (8 GB)",
            aliases=("rpi5", "rpi 5", "raspberry pi", "pi5", "pi 5", "raspberry pi 5 8gb"),
            device="Broadcom BCM2712: 4x Cortex-A76 at 2.4 GHz, LPDDR4X-4267 on a 32-bit bus",
            memory_gb=8,
            usable_memory_gb=7,
            bandwidth_gbs=17.1,
            achievable_bandwidth_fraction=0.55,
            # per core and cycle: 2x128-bit NEON FMA = 16 fp32 FLOP, 32 fp16 FLOP, 64 int8 ops (SDOT)
            peak_gflops={"fp32": 153.6, "fp16": 307.2, "int8": 614.4},
            precisions=("fp32", "fp16", "int8", "int4"),
            runtimes=("onnxruntime-cpu", "torch-cpu"),
            runtime_overhead_gb=0.3,
            notes=(
                "Theoretical bandwidth: 4267 MT/s x 4 bytes (32-bit bus) = 17.1 GB/s; achievable assumed 55% "
                "(an assumption for a narrow LPDDR4X bus, not measured by robopt).",
                "Peaks are theoretical NEON figures computed from the core count and clock (our arithmetic, "
                "not a vendor number); Cortex-A76 is Armv8.2-A with fp16 arithmetic and dot product, but no "
                "bf16 instructions (Armv8.6) and no fp8.",
                "int4 means weight-only int4 (e.g. ORT MatMulNBits, llama.cpp); compute at the int8 peak.",
                "Assumes the 8 GB board; usable = 8 GB minus about 1 GB for Raspberry Pi OS Lite.",
            ),
            sources=(
                "Raspberry Pi 5 product brief (raspberrypi.com): BCM2712, quad Cortex-A76 2.4 GHz, "
                "LPDDR4X-4267",
                "Arm Cortex-A76 Software Optimization Guide (two 128-bit ASIMD FMA pipes)",
            ),
        ),
        TargetProfile(
            name="x86-laptop",
            display_name="Generic x86 laptop (assumed: 4 cores, AVX2+FMA, DDR4-3200 dual channel)",
            aliases=("laptop", "x86 laptop", "x86", "notebook"),
            device="Assumed 4 performance cores at 3.0 GHz sustained, AVX2 + FMA, AVX-VNNI",
            memory_gb=16,
            usable_memory_gb=10,
            bandwidth_gbs=51.2,
            achievable_bandwidth_fraction=0.7,
            # per core and cycle: 2x256-bit FMA = 32 fp32 FLOP; AVX-VNNI int8 = 4x fp32
            peak_gflops={"fp32": 384.0, "int8": 1536.0},
            precisions=("fp32", "int8", "int4"),
            runtimes=("onnxruntime-cpu", "torch-cpu"),
            runtime_overhead_gb=0.3,
            notes=(
                "Every figure is an assumption for a typical 2020-2024 laptop, not a measured machine.",
                "fp16/bf16 arithmetic is not native on most laptop CPUs (AVX512-FP16/AMX are server parts); "
                "such models run by upcasting to fp32 and are reported as unsupported here.",
                "Usable memory assumes 6 GB taken by the OS and other applications.",
            ),
            sources=("DDR4-3200 x 2 channels x 8 bytes = 51.2 GB/s (JEDEC arithmetic)",),
        ),
    ]
    return {p.name: p for p in profiles}


def this_machine_target(machine: MachineProfile) -> TargetProfile:
    """Describe this machine as a target from its measured profile (not estimated)."""
    peaks = dict(machine.roof().peak_gflops)  # the highest measured peak of each precision, any runtime
    total = machine.memory_gb
    return TargetProfile(
        name=THIS_MACHINE,
        display_name=f"This machine ({machine.cpu_model}, {machine.physical_cores} cores)",
        aliases=_THIS_MACHINE_ALIASES,
        device=machine.cpu_model,
        memory_gb=total,
        usable_memory_gb=max(0.5, total * 0.8),
        bandwidth_gbs=machine.bandwidth_gbs,
        achievable_bandwidth_fraction=1.0,
        peak_gflops=peaks,
        precisions=("fp32", "fp16", "bf16", "int8", "int4"),
        runtimes=("torch-cpu", "onnxruntime-cpu"),
        runtime_overhead_gb=0.3,
        measured=True,
        notes=(
            "Bandwidth and compute measured (tools.evaluation.machine); latency is measured, not projected.",
            "fp16/bf16 run in torch on CPU (often slower than fp32 without AVX512-FP16/AMX); fp8 is not "
            "supported by CPU kernels.",
            "Usable memory: 80% of installed RAM.",
        ),
        sources=(f"measured {machine.measured_at.isoformat()}",),
    )


def known_targets(machine: MachineProfile | None = None) -> dict[str, TargetProfile]:
    """Return every target by canonical name; this machine is included when its profile is given."""
    targets = _builtin_targets()
    if machine is not None:
        targets = {THIS_MACHINE: this_machine_target(machine), **targets}
    return targets


def _key(name: str) -> str:
    """Normalize a target name: lower case, without 'nvidia'/'jetson', punctuation or spaces."""
    text = re.sub(r"\b(nvidia|jetson)\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "", text)


def canonical_target_name(name: str) -> str:
    """Return the canonical name of a target given by name or alias, without needing the machine profile."""
    wanted = _key(name)
    if wanted in {_key(THIS_MACHINE)} | {_key(a) for a in _THIS_MACHINE_ALIASES}:
        return THIS_MACHINE
    for target in _builtin_targets().values():
        if wanted in {_key(target.name), _key(target.display_name)} | {_key(a) for a in target.aliases}:
            return target.name
    known = [THIS_MACHINE, *_builtin_targets()]
    raise NotFoundError(
        f"unknown target {name!r}", hint="known targets: " + ", ".join(known), detail={"known": known}
    )


def resolve_target(name: str, machine: MachineProfile | None = None) -> TargetProfile:
    """Find a target by canonical name or alias ('Jetson Orin NX', 'orin nano', 'rpi5', 'this machine')."""
    canonical = canonical_target_name(name)
    if canonical == THIS_MACHINE:
        if machine is None:
            raise NotFoundError(
                "the 'this-machine' target needs the measured machine profile",
                hint="pass machine=machine_profile(data_dir)",
            )
        return this_machine_target(machine)
    return _builtin_targets()[canonical]


# --- projection ------------------------------------------------------------------------------------------


class ProjectedLatency(BaseModel):
    """Latency of one model on one target: measured (this machine) or a calibrated roofline estimate."""

    model_config = ConfigDict(frozen=True)

    target: str
    latency_ms: float = Field(description="Median latency of one forward pass at the measured batch.")
    estimated: bool = Field(description="False only for this machine, where it is measured.")
    method: str
    precision: Precision
    batch: int
    efficiency: float | None = Field(
        default=None,
        description="Measured latency here / roofline floor here (>= 1 means slower than floor; below 1 the "
        "floor here is wrong, see floor_error).",
    )
    floor_here: RooflineFloor | None = None
    floor_target: RooflineFloor | None = None
    floor_error: str | None = Field(
        default=None,
        description="Set when the latency measured here beats the floor here (efficiency < 1): that floor "
        "is a measurement error, nothing is projected from it, and latency_ms is the target's own floor "
        "(a lower bound).",
    )

    @property
    def label(self) -> str:
        """A human label that always says when the figure is an estimate, and when only a lower bound."""
        if self.floor_error is not None:
            return f">= {self.latency_ms:.3g} ms (estimated: target's roofline floor; floor here mismeasured)"
        return f"{self.latency_ms:.3g} ms" + (" (estimated)" if self.estimated else " (measured)")


def project_latency(
    measured: RuntimeFigures,
    size: SizeFigures,
    flops: int | None,
    target: TargetProfile,
    machine: MachineProfile | None,
    *,
    precision: str | None = None,
    activation_bytes: int = 0,
) -> ProjectedLatency:
    """Project the latency measured here onto `target` through both roofline floors (labelled estimated).

    `flops` are batch-1 FLOPs; they are scaled by the measured batch, weights are read once a pass.
    """
    wanted = normalize_precision(precision) if precision else size.dominant_precision()
    if target.measured:
        return ProjectedLatency(
            target=target.name,
            latency_ms=measured.p50_ms,
            estimated=False,
            method=f"measured here on {measured.runtime} ({measured.threads} threads)",
            precision=wanted,
            batch=measured.batch,
        )
    if machine is None:
        raise ValidationError(
            f"projecting onto {target.name} needs this machine's profile",
            hint="pass machine_profile(data_dir)",
        )
    total_flops = None if flops is None else flops * measured.batch
    here = roofline_floor_ms(
        size.weight_bytes,
        total_flops,
        machine,
        activation_bytes=activation_bytes,
        precision=wanted,
        threads=measured.threads,
        runtime=measured.runtime,
    )
    there = roofline_floor_ms(
        size.weight_bytes, total_flops, target.roof(), activation_bytes=activation_bytes, precision=wanted
    )
    if here.floor_ms <= 0:
        raise ValidationError("cannot project latency: the model moves no bytes and does no FLOPs")
    efficiency = measured.p50_ms / here.floor_ms
    if efficiency < 1:
        return _floor_error_projection(measured, target, wanted, efficiency, here, there)
    return ProjectedLatency(
        target=target.name,
        latency_ms=efficiency * there.floor_ms,
        estimated=True,
        method=(
            f"roofline projection: measured p50 here ({measured.p50_ms:.3g} ms on {measured.runtime}) x "
            f"floor on target ({there.floor_ms:.3g} ms, {there.bound}-bound) / floor here "
            f"({here.floor_ms:.3g} ms, {here.bound}-bound, {here.roof}); assumes the target reaches the same "
            "fraction of its roofline as this machine, which ignores kernel-launch overhead and runtime "
            "differences"
        ),
        precision=wanted,
        batch=measured.batch,
        efficiency=efficiency,
        floor_here=here,
        floor_target=there,
    )


def _floor_error_projection(
    measured: RuntimeFigures,
    target: TargetProfile,
    precision: Precision,
    efficiency: float,
    here: RooflineFloor,
    there: RooflineFloor,
) -> ProjectedLatency:
    """Give the target's own floor (a lower bound) when the latency measured here beats the floor here."""
    unit = "GOP/s" if here.peak_precision.startswith("int") else "GFLOP/s"
    ceiling = (
        f"{here.peak_gflops:.3g} {unit} {here.peak_precision} peak"
        if here.bound == "compute"
        else f"{here.bandwidth_gbs:.3g} GB/s bandwidth"
    )
    error = (
        f"measured p50 here ({measured.p50_ms:.3g} ms on {measured.runtime}, {measured.threads} threads) "
        f"is {1 / efficiency:.3g}x below the {here.bound}-bound roofline floor here ({here.floor_ms:.3g} ms "
        f"from the {ceiling} of {here.roof}): that ceiling was measured too low for this runtime, so this "
        "floor is wrong and nothing is projected from it"
    )
    return ProjectedLatency(
        target=target.name,
        latency_ms=there.floor_ms,
        estimated=True,
        method=(
            f"target's own roofline floor ({there.floor_ms:.3g} ms, {there.bound}-bound), a lower bound, "
            f"not a projection: {error}"
        ),
        precision=precision,
        batch=measured.batch,
        efficiency=efficiency,
        floor_here=here,
        floor_target=there,
        floor_error=error,
    )


# --- pre-flight ------------------------------------------------------------------------------------------


class Feasibility(BaseModel):
    """Whether a model can be deployed on a target at a precision, and every reason when not."""

    model_config = ConfigDict(frozen=True)

    target: str
    precision: Precision
    runtime: str | None
    fits: bool = Field(description="True when memory, precision and runtime all allow deployment.")
    reasons: list[str] = Field(default_factory=list, description="Why not, one line each.")
    warnings: list[str] = Field(default_factory=list)
    weight_gb: float
    required_gb: float = Field(description="weights x (1 + activation margin) + runtime overhead.")
    usable_gb: float
    activation_margin: float


def weight_bytes_at(params: int, precision: str) -> int:
    """Bytes `params` weights take at `precision` (fp16: 2 a weight, int4: half a byte)."""
    return int(params * BYTES_PER_ELEMENT[normalize_precision(precision)])


def preflight(
    target: TargetProfile,
    precision: str,
    *,
    size: SizeFigures | None = None,
    params: int | None = None,
    weight_bytes: int | None = None,
    runtime: str | None = None,
    activation_margin: float = 0.2,
) -> Feasibility:
    """Check that a model fits `target`'s usable memory at `precision`, which it runs, on `runtime`.

    Give exactly one of `size` (stored weights as measured), `params` (sized at `precision`) or
    `weight_bytes`. Required memory = weights x (1 + activation_margin) + the target's runtime overhead.
    """
    given = [v is not None for v in (size, params, weight_bytes)]
    if sum(given) != 1:
        raise ValidationError("give exactly one of size, params or weight_bytes to preflight")
    if activation_margin < 0:
        raise ValidationError(f"activation_margin must be >= 0, got {activation_margin}")
    wanted = normalize_precision(precision)
    if size is not None:
        weights = size.weight_bytes
    elif params is not None:
        weights = weight_bytes_at(params, wanted)
    else:
        weights = int(weight_bytes or 0)
    weight_gb = weights / _GB
    required = weight_gb * (1 + activation_margin) + target.runtime_overhead_gb
    reasons: list[str] = []
    warnings: list[str] = []
    if required > target.usable_memory_gb:
        reasons.append(
            f"needs {required:.2f} GB ({weight_gb:.2f} GB of {wanted} weights + {activation_margin:.0%} "
            f"activation margin + {target.runtime_overhead_gb:g} GB runtime) but {target.name} has "
            f"{target.usable_memory_gb:.2f} GB usable of {target.memory_gb:.0f} GB"
        )
    elif required > 0.8 * target.usable_memory_gb:
        warnings.append(f"uses {required / target.usable_memory_gb:.0%} of {target.name}'s usable memory")
    if wanted not in target.precisions:
        reasons.append(
            f"{wanted} is not supported on {target.name} (supported: {', '.join(target.precisions)})"
        )
    if runtime is not None and runtime not in target.runtimes:
        reasons.append(
            f"runtime {runtime} is not available on {target.name} (has: {', '.join(target.runtimes)})"
        )
    if not target.measured:
        warnings.append("target figures are from datasheets and stated assumptions (estimated)")
    return Feasibility(
        target=target.name,
        precision=wanted,
        runtime=runtime,
        fits=not reasons,
        reasons=reasons,
        warnings=warnings,
        weight_gb=weight_gb,
        required_gb=required,
        usable_gb=target.usable_memory_gb,
        activation_margin=activation_margin,
    )
