"""Analysis: read the measured profile of the original model and say where its size and time go, how far the
goal is, which layers are fragile, and which technique families fit.

`analyze_rules` is the expert counterpart of the `analysis` prompt; both answer with an `Analysis`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.base import AgentSpec
from agents.intake import GoalSpec
from tools.errors import ValidationError
from tools.evaluation.measurement import Measurement
from tools.evaluation.sensitivity import LayerSensitivity
from tools.evaluation.targets import Feasibility

_MB = 1024 * 1024
Bottleneck = Literal["compute", "memory", "overhead", "unknown"]
CONV_HEAVY_SHARE = 0.3
"""Share of the FLOPs in convolutions from which dynamic INT8 (MatMul/Gemm only) leaves too much in float."""


class ComponentShare(BaseModel):
    """One component's share of the parameters and FLOPs."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str
    params: int
    param_share: float = Field(ge=0, le=1)
    flops_share: float | None = Field(default=None, ge=0, le=1)


class ModelSummary(BaseModel):
    """The profile facts analysis reasons over (computed by tools.profiling, measured)."""

    model_config = ConfigDict(frozen=True)

    name: str
    format: str
    params: int
    artifact_bytes: int | None = None
    flops: int | None = None
    architecture: str = Field(description="Detected kind, e.g. 'vla', 'transformer', 'conv', 'mlp'.")
    architecture_summary: str = ""
    components: list[ComponentShare] = Field(default_factory=list)
    layer_types: dict[str, int] = Field(default_factory=dict, description="Layer type -> parameters.")
    transformer_blocks: int = 0
    conv_flops_share: float | None = Field(
        default=None, ge=0, le=1, description="Share of the FLOPs in convolutions (None when not counted)."
    )


class AnalysisInput(BaseModel):
    """Everything measured about the original, plus the goal."""

    model_config = ConfigDict(frozen=True)

    goal: GoalSpec
    model: ModelSummary
    baseline: Measurement
    floor_ms: float | None = Field(default=None, description="Roofline floor on this machine, fp32, batch 1.")
    floor_bound: Literal["compute", "memory"] | None = None
    quantization_sensitivity: list[LayerSensitivity] = Field(default_factory=list, description="Ranked.")
    pruning_sensitivity: list[LayerSensitivity] = Field(default_factory=list, description="Ranked.")
    feasibility: list[Feasibility] = Field(default_factory=list, description="Per target at fp32 and int8.")
    available_techniques: list[str] = Field(default_factory=list)


class Analysis(BaseModel):
    """What the planner needs to know about the model and the distance to the goal."""

    model_config = ConfigDict(frozen=True)

    summary: str = Field(description="Two or three sentences a robotics engineer would write.")
    architecture: str = Field(
        default="unknown", description="Detected kind: vla, vlm, visual_policy, cnn, ..."
    )
    bottleneck: Bottleneck = Field(
        description="'overhead' when measured latency is far above the roofline floor (framework overhead)."
    )
    dominant_components: list[str] = Field(
        default_factory=list, description="Components holding most weight."
    )
    sensitive_layers: list[str] = Field(
        default_factory=list, description="Layers to keep in float when quantizing (ranked, most first)."
    )
    sensitive_linear_layers: list[str] = Field(
        default_factory=list,
        description="The Linear layers among the sensitive ones: what MatMul/Gemm INT8 can keep in float.",
    )
    prunable_blocks: list[str] = Field(default_factory=list, description="Blocks cheapest to remove.")
    conv_flops_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Measured share of the FLOPs in convolutions: what dynamic INT8 (MatMul/Gemm) leaves in "
        "float and static INT8 covers.",
    )
    speedup_needed: float | None = Field(default=None, description="Baseline / limit latency on the target.")
    compression_needed: float | None = Field(default=None, description="Baseline / limit artifact bytes.")
    recommended: list[str] = Field(default_factory=list, description="Technique names, most promising first.")
    risks: list[str] = Field(default_factory=list)


def needed_factors(goal: GoalSpec, baseline: Measurement) -> tuple[float | None, float | None]:
    """Return (speedup, compression) the goal asks of the baseline; None where it asks nothing."""
    criteria = goal.criteria
    speedup = criteria.min_speedup
    if criteria.max_latency_ms is not None:
        found = baseline.latency_on(criteria.latency_target)
        if found is not None:
            speedup = max(speedup or 0.0, found[0] / criteria.max_latency_ms)
    compression = criteria.min_compression
    if criteria.max_size_mb is not None and baseline.size and baseline.size.artifact_bytes:
        compression = max(compression or 0.0, baseline.size.artifact_bytes / (criteria.max_size_mb * _MB))
    return speedup, compression


def _bottleneck(payload: AnalysisInput) -> Bottleneck:
    """Overhead when the measured p50 is over 4x the roofline floor, else the floor's own bound."""
    runtime = payload.baseline.runtime
    if runtime is None or payload.floor_ms is None or payload.floor_ms <= 0:
        return "unknown"
    if runtime.p50_ms > 4 * payload.floor_ms:
        return "overhead"
    return payload.floor_bound or "unknown"


def sensitive_layers(ranked: list[LayerSensitivity], limit: int = 4) -> list[str]:
    """Layers whose int8 error stands out: above 3x the median score and above 1e-3, most sensitive first."""
    if not ranked:
        return []
    scores = sorted(item.score for item in ranked)
    median = scores[len(scores) // 2]
    threshold = max(3 * median, 1e-3)
    return [item.name for item in ranked if item.score > threshold][:limit]


def analyze_rules(payload: AnalysisInput) -> Analysis:
    """Expert reading of the profile: bottleneck, fragile layers, distance to the goal, families that fit."""
    model, baseline = payload.model, payload.baseline
    speedup, compression = needed_factors(payload.goal, baseline)
    bottleneck = _bottleneck(payload)
    components = sorted(model.components, key=lambda c: c.params, reverse=True)
    dominant = [c.name for c in components if c.param_share >= 0.25][:3]
    fragile = sensitive_layers(payload.quantization_sensitivity)
    linear = {item.name for item in payload.quantization_sensitivity if item.layer_type == "Linear"}
    fragile_linear = sensitive_layers(
        [item for item in payload.quantization_sensitivity if item.name in linear]
    )
    prunable = [item.name for item in reversed(payload.pruning_sensitivity)][:2]
    available = set(payload.available_techniques)
    recommended: list[str] = []
    risks: list[str] = []
    heavy_speed = speedup is not None and speedup > 4.0
    heavy_size = compression is not None and compression > 3.5
    if (heavy_speed or payload.goal.objective != "meet") and model.format != "onnx":
        recommended += ["structured_prune", "distill"]
    if heavy_size:
        recommended.append("ort_matmul_4bits")
    recommended += ["ort_int8_dynamic", "ort_int8_static", "onnx_export"]
    if bottleneck == "overhead":
        risks.append("latency is dominated by framework overhead: a graph runtime (ONNX Runtime) helps most")
    if (model.conv_flops_share or 0.0) >= CONV_HEAVY_SHARE:
        risks.append(
            f"{model.conv_flops_share:.0%} of the FLOPs are convolutions, which dynamic INT8 leaves in float: "
            "static INT8 (calibrated) covers them"
        )
    if fragile:
        risks.append(
            f"int8 error concentrates in {', '.join(fragile[:2])}: keep them in float if accuracy drops"
        )
    for item in payload.feasibility:
        if not item.fits:
            risks.append(f"{item.target} at {item.precision}: {'; '.join(item.reasons)}")
    recommended = [name for name in dict.fromkeys(recommended) if name in available]
    size = (
        f"{baseline.size.artifact_bytes / _MB:.1f} MB"
        if baseline.size and baseline.size.artifact_bytes
        else "?"
    )
    latency = f"{baseline.runtime.p50_ms:.2f} ms" if baseline.runtime else "unmeasured"
    needs = []
    if speedup:
        needs.append(f"{speedup:.1f}x faster")
    if compression:
        needs.append(f"{compression:.1f}x smaller")
    summary = (
        f"{model.name}: {model.architecture_summary or model.architecture}, {model.params / 1e6:.2f}M params, {size}, "
        f"p50 {latency} here ({bottleneck}-bound)."
        + (f" The goal needs {' and '.join(needs)}." if needs else " The goal sets no size or speed limit.")
    )
    return Analysis(
        summary=summary,
        architecture=model.architecture,
        bottleneck=bottleneck,
        dominant_components=dominant,
        sensitive_layers=fragile,
        sensitive_linear_layers=fragile_linear,
        prunable_blocks=prunable,
        conv_flops_share=model.conv_flops_share,
        speedup_needed=speedup,
        compression_needed=compression,
        recommended=recommended,
        risks=risks,
    )


def check_analysis(payload: AnalysisInput, analysis: Analysis) -> None:
    """Refuse an analysis that recommends techniques that are not available or names unknown layers."""
    unknown = [name for name in analysis.recommended if name not in payload.available_techniques]
    if unknown:
        raise ValidationError(f"analysis recommends techniques that are not available: {unknown}")
    layers = {item.name for item in payload.quantization_sensitivity}
    invented = [
        name for name in analysis.sensitive_layers + analysis.sensitive_linear_layers if name not in layers
    ]
    if invented:
        raise ValidationError(f"analysis names sensitive layers the model does not have: {invented}")


ANALYSIS = AgentSpec(
    name="analysis",
    prompt="analysis",
    input_type=AnalysisInput,
    output_type=Analysis,
    rules=analyze_rules,
    check=check_analysis,
)
