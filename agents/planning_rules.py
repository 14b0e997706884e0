"""The rule planner: expert rules that choose the next attempt from measured effects and the remaining gap.

The order encodes what holds on CPUs and edge runtimes, decided from the measured effects in the registry
(never from a technique's name): structural reduction (prune, then distill back) only happens before export
and only when the goal needs more than quantization gives or asks for the best model; ONNX Runtime INT8 is
the default speed and size step; sensitive layers are kept in float when INT8 breaks accuracy (mixed
precision); 4-bit weights when the size limit needs more than INT8; FP32 ONNX Runtime as the lossless speed step.
Techniques measured slower than FP32 on this machine are not chosen when latency matters.
"""

from __future__ import annotations

from typing import Any

from agents.analysis import CONV_HEAVY_SHARE
from agents.planning import (
    QUANTIZED_BY,
    PlannedTechnique,
    PlanningInput,
    PlanStep,
    TechniqueOption,
    ruled_out_techniques,
    same_steps,
)

STRUCTURAL_MIN_SECONDS = 150.0
"""Prune + distill is only planned with at least this much wall time left (distillation is time-bounded)."""


def _ratio(value: float | None, default: float) -> float:
    """A measured ratio, or the default when the registry has none."""
    return value if value and value > 0 else default


def residual_needs(payload: PlanningInput) -> tuple[float, float]:
    """How much faster and smaller the current version still has to get (1.0 = nothing more needed)."""
    criteria = payload.goal.criteria
    current, baseline = payload.current.measurement, payload.baseline
    speed = size = 1.0
    latency = current.latency_on(criteria.latency_target)
    if criteria.max_latency_ms is not None and latency is not None:
        speed = max(speed, latency[0] / criteria.max_latency_ms)
    if criteria.min_speedup is not None and current.runtime and baseline.runtime:
        achieved = baseline.runtime.p50_ms / current.runtime.p50_ms
        speed = max(speed, criteria.min_speedup / achieved)
    current_bytes = current.size.artifact_bytes if current.size else None
    baseline_bytes = baseline.size.artifact_bytes if baseline.size else None
    if criteria.max_size_mb is not None and current_bytes:
        size = max(size, current_bytes / (criteria.max_size_mb * 1024 * 1024))
    if criteria.min_compression is not None and current_bytes and baseline_bytes:
        size = max(size, criteria.min_compression / (baseline_bytes / current_bytes))
    return speed, size


def _step(name: str, **params: Any) -> PlannedTechnique:
    return PlannedTechnique(technique=name, params=params)


def _structural(payload: PlanningInput, ratio: float) -> list[PlannedTechnique]:
    """Structured pruning at `ratio`, then distillation from the unpruned version, time-bounded."""
    budget = min(120.0, max(20.0, payload.seconds_left * 0.2))
    return [
        _step("structured_prune", ratio=ratio),
        _step("distill", steps=400, time_budget_s=round(budget, 1)),
    ]


def candidate_attempts(payload: PlanningInput) -> list[tuple[list[PlannedTechnique], str]]:
    """Every attempt worth making from the current version, best first, each with its rationale."""
    goal, current = payload.goal, payload.current
    options: dict[str, TechniqueOption] = {
        option.name: option for option in payload.techniques if current.format in option.input_formats
    }
    sampler = _sampler_plans(payload, options)
    if sampler is not None:
        return sampler
    speed, size = residual_needs(payload)
    wants_speed = speed > 1.0 or goal.objective == "fastest"
    wants_size = size > 1.0 or goal.objective == "smallest"
    int8 = options.get("ort_int8_dynamic")
    int8_effect = int8.expected(payload.analysis.architecture) if int8 else (None, None)
    int8_speed = _ratio(int8_effect[0], 3.0)
    int8_size = 1 / _ratio(int8_effect[1], 0.3)
    real_data = payload.calibration != "synthetic"
    quantized = any(name in QUANTIZED_BY for name in current.lineage)
    fragile = payload.analysis.sensitive_linear_layers
    plans: list[tuple[list[PlannedTechnique], str]] = []

    structural_ok = (
        "structured_prune" in options
        and "distill" in options
        and "structured_prune" not in current.lineage
        and not quantized
        and real_data
        and payload.attempts_left >= 3
        and payload.seconds_left >= STRUCTURAL_MIN_SECONDS
    )
    beyond_quantization = speed > 0.8 * int8_speed or size > 0.9 * int8_size or goal.objective != "meet"
    if structural_ok and beyond_quantization:
        why = (
            f"the goal needs {speed:.1f}x speed and {size:.1f}x size from here, more than INT8 alone gives "
            f"(measured {int8_speed:.1f}x, {int8_size:.1f}x)"
            if goal.objective == "meet"
            else f"the goal asks for the {goal.objective} model: remove channels first, then quantize"
        )
        plans.append((_structural(payload, 0.4), f"prune 40% of channels and distill back: {why}"))
        plans.append((_structural(payload, 0.25), f"prune 25% of channels and distill back (gentler): {why}"))
    if not quantized and (wants_speed or wants_size):
        four_bit = options.get("ort_matmul_4bits")
        if four_bit and size > 0.95 * int8_size:
            plans.append(
                (
                    [_step("ort_matmul_4bits", block_size=32)],
                    f"size must shrink {size:.1f}x, more than INT8's measured {int8_size:.1f}x: 4-bit weights",
                )
            )
        dynamic: list[tuple[list[PlannedTechnique], str]] = []
        if int8:
            dynamic.append(
                (
                    [_step("ort_int8_dynamic", per_channel=True)],
                    f"ONNX Runtime INT8 (dynamic, per channel): measured {int8_speed:.1f}x faster and "
                    f"{int8_size:.1f}x smaller on the reference models",
                )
            )
            for keep in dict.fromkeys((tuple(fragile[:2]), tuple(fragile[:4]))):
                if keep:
                    dynamic.append(
                        (
                            [_step("ort_int8_dynamic", per_channel=True, nodes_to_exclude=list(keep))],
                            f"mixed precision: INT8 with the most sensitive layers kept in float ({', '.join(keep)})",
                        )
                    )
        static = _static_int8(payload, options, real_data)
        # Conv-heavy: dynamic INT8 covers only MatMul/Gemm, so static INT8 (which covers Conv) goes first
        plans += static + dynamic if conv_heavy(payload) else dynamic + static
        if four_bit and wants_size and not any(p[0][0].technique == "ort_matmul_4bits" for p in plans):
            plans.append(
                ([_step("ort_matmul_4bits", block_size=32)], "4-bit weights for the smallest artifact")
            )
    if current.format != "onnx" and "onnx_export" in options and wants_speed:
        export = ([_step("onnx_export")], "FP32 ONNX Runtime: a lossless speedup over eager PyTorch")
        if size <= 1.0 and goal.objective != "smallest":
            # lossless first: every lossy ONNX step would be measured on this export anyway, and the export
            # alone may meet a speed goal (Diffusion Policy: 9 minutes of rejected INT8 before it did)
            structural = sum(1 for steps, _ in plans if steps[0].technique == "structured_prune")
            export = (export[0], export[1] + "; lossless, so it goes before the lossy steps")
            plans.insert(structural, export)
        else:
            plans.append(export)
    return plans


def _sampler_plans(
    payload: PlanningInput, options: dict[str, TechniqueOption]
) -> list[tuple[list[PlannedTechnique], str]] | None:
    """The plans of a DDPM Diffusion Policy (or its sampler export), which no whole-graph technique takes; else
    None. DDPM draws noise at every denoising step, so the policy exports as its sampler (encoder + denoiser
    ONNX and the loop as data, lossless) first, then the sampler's graphs go FP16 once, then, while speed is
    still missing, fewer DDIM steps (lossy: most steps first is least lossy, so the fewest go first only when
    the remaining speed gap needs them)."""
    current = payload.current
    if "lerobot_sampler_export" not in options:
        return None
    if current.format == "lerobot_policy" and current.sampler == "DDPM":
        return [
            (
                [_step("lerobot_sampler_export")],
                "DDPM Diffusion Policy: no whole-graph export (noise at every step); export the encoder and the "
                "denoiser to ONNX Runtime with the loop as data (lossless)",
            )
        ]
    if current.format == "lerobot_sampler":
        wants = payload.goal.objective != "meet" or max(residual_needs(payload)) > 1.0
        plans = []
        if wants and current.lineage.count("lerobot_sampler_export") == 1:
            plans.append(
                ([_step("lerobot_sampler_export", fp16=True)], "FP16 graphs for the diffusion sampler")
            )
        return plans + _fewer_steps_plans(payload, options)
    return None


def _fewer_steps_plans(
    payload: PlanningInput, options: dict[str, TechniqueOption]
) -> list[tuple[list[PlannedTechnique], str]]:
    """Fewer DDIM denoising steps for a diffusion sampler that is still too slow, once per lineage.

    The step counts come from the config's search range. The denoiser's calls are the loop's cost, so the
    first count tried is the largest (least lossy) that closes the speed gap if the sampler now runs at least
    the range's largest count; fewer follow, then the larger ones (tried when fewer lose too much accuracy).
    """
    option = options.get("lerobot_fewer_steps")
    speed, _ = residual_needs(payload)
    wants_speed = speed > 1.0 or payload.goal.objective == "fastest"
    if option is None or not wants_speed or "lerobot_fewer_steps" in payload.current.lineage:
        return []
    field = option.parameters.get("num_inference_steps", {})
    counts = sorted({int(n) for n in field.get("search") or [field.get("default") or 10]}, reverse=True)
    closing = [n for n in counts if counts[0] / n >= speed] or counts[-1:]
    ordered = [n for n in counts if n <= closing[0]] + [n for n in counts if n > closing[0]]
    return [
        (
            [_step("lerobot_fewer_steps", num_inference_steps=steps)],
            f"DDIM in {steps} denoising steps: speed still {speed:.1f}x short after the lossless sampler export; "
            "lossy, judged by action agreement",
        )
        for steps in ordered
    ]


def conv_heavy(payload: PlanningInput) -> bool:
    """Whether convolutions hold enough of the FLOPs that dynamic INT8 (MatMul/Gemm only) leaves them in float."""
    return (payload.analysis.conv_flops_share or 0.0) >= CONV_HEAVY_SHARE


def _static_int8(
    payload: PlanningInput, options: dict[str, TechniqueOption], real_data: bool
) -> list[tuple[list[PlannedTechnique], str]]:
    """Static INT8 (activations too, Conv covered): on real observations, or on a Conv-heavy model where dynamic
    INT8 cannot reach the convolutions; for Conv-heavy models also the Conv backbone alone in INT8 (mixed)."""
    heavy = conv_heavy(payload)
    if "ort_int8_static" not in options or not (real_data or heavy):
        return []
    source = "real observations" if real_data else "synthetic inputs shaped like the model's (no data given)"
    plans = [
        (
            [_step("ort_int8_static", per_channel=True, calibration_method="percentile")],
            f"static INT8 calibrated on {source} (activations quantized too, Conv included)",
        )
    ]
    if heavy:
        share = payload.analysis.conv_flops_share or 0.0
        plans[0] = (plans[0][0], plans[0][1] + f": {share:.0%} of the FLOPs are convolutions")
        plans.append(
            (
                [
                    _step(
                        "ort_int8_static",
                        per_channel=True,
                        calibration_method="percentile",
                        op_types_to_quantize=["Conv"],
                    )
                ],
                f"mixed precision: the Conv backbone ({share:.0%} of the FLOPs) in static INT8, the rest in float",
            )
        )
    return plans


def _tried(payload: PlanningInput, steps: list[PlannedTechnique]) -> bool:
    """Whether the same chain was already attempted on the current version, or holds a technique that failed on
    the model's structure (ruled out whatever its parameters)."""
    ruled = ruled_out_techniques(payload.attempts)
    if any(step.technique in ruled for step in steps):
        return True
    wanted = [step.config_json() for step in steps]
    return any(
        attempt.parent_version == payload.current.version_id and same_steps(attempt.steps, wanted)
        for attempt in payload.attempts
    )


def plan_rules(payload: PlanningInput) -> PlanStep:
    """Finish when the goal is met (and asks no more) or nothing untried can help; else the best next attempt."""
    goal, check = payload.goal, payload.check
    version = payload.current.version_id
    if check.passed and goal.objective == "meet":
        return PlanStep(action="finish", rationale=f"version {version} meets every criterion")
    accuracy_missing = [r for r in check.missing if r.name in ("accuracy_floor", "max_accuracy_drop")]
    if accuracy_missing:
        return PlanStep(
            action="finish",
            rationale=f"version {version} misses the accuracy criterion ({accuracy_missing[0].note}); "
            "compression cannot raise accuracy",
        )
    if payload.attempts_left <= 0:
        return PlanStep(action="finish", rationale="no attempts left in the budget")
    plans = [(steps, why) for steps, why in candidate_attempts(payload) if not _tried(payload, steps)]
    start_from = None
    base = payload.float_base
    if not plans and base is not None and base.version_id != version:
        # the current version is quantized: chains never tried on the unquantized model may still reach the goal
        branch = payload.model_copy(update={"current": base})
        plans = [(steps, why) for steps, why in candidate_attempts(branch) if not _tried(branch, steps)]
        plans = [(steps, f"from version {base.version_id} (not quantized): {why}") for steps, why in plans]
        start_from = base.version_id if plans else None
    if not plans:
        missing = ", ".join(r.name for r in check.missing) or "nothing"
        tried = f" or version {base.version_id}" if base is not None and base.version_id != version else ""
        return PlanStep(
            action="finish",
            rationale=f"no untried technique can improve version {version}{tried} further "
            f"(still missing: {missing})",
        )
    steps, why = plans[0]
    return PlanStep(
        action="apply",
        steps=steps,
        rationale=why,
        then=["+".join(step.technique for step in later) for later, _ in plans[1:3]],
        start_from=start_from,
    )
