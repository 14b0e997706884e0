"""The rule planner: expert rules that choose the next attempt from measured effects and the remaining gap.

The order encodes what holds on CPUs and edge runtimes, decided from the measured effects in the registry
(never from a technique's name): structural reduction (prune, then distill back) only happens before export
and only when the goal needs more than quantization gives or asks for the best model; ONNX Runtime INT8 is
the default speed and size step; sensitive layers are kept in float when INT8 breaks accuracy (mixed
precision); 4-bit weights when the size limit needs more than INT8; FP32 ONNX Runtime as the lossless speed step.
Techniques measured slower than FP32 on this machine are not chosen when latency matters.
Once a version meets every criterion, the search goes on for a better one on the goal's priority while an
untried chain's predicted gain beats measurement noise (`agents.improvement`), unless the goal asks to stop at
the first version that meets it.
"""

from __future__ import annotations

from typing import Any

from agents.analysis import CONV_HEAVY_SHARE
from agents.improvement import (
    MAX_IMPROVEMENT_ATTEMPTS,
    Prediction,
    describe,
    noise_threshold,
    predict,
    search_stop,
)
from agents.planning import (
    QUANTIZED_BY,
    REFERENCE_FOR,
    PlannedTechnique,
    PlanningInput,
    PlanStep,
    RankedCandidate,
    TechniqueOption,
    VersionSummary,
    ruled_out_techniques,
    same_steps,
)
from tools.evaluation.report import SearchStopRule
from tools.techniques.search_space import candidate_chains, canonical_chain

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
                    [_step("ort_int8_dynamic", per_channel=False)],
                    f"ONNX Runtime INT8 (dynamic, per tensor: ONNX Runtime's default and its fastest INT8 kernels "
                    f"here, 0.48 vs 0.54 ms per channel on the reference VLA): measured {int8_speed:.1f}x faster "
                    f"and {int8_size:.1f}x smaller on the reference models",
                )
            )
            dynamic.append(
                (
                    [_step("ort_int8_dynamic", per_channel=True)],
                    "ONNX Runtime INT8 (dynamic, per channel): one scale per output channel keeps accuracy where "
                    "per tensor loses it, at some speed",
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
        if fusable(payload, options):
            plans.append(export)  # the plain export stays as the fallback
            export = (
                [_step("ort_transformer_fusion")],
                "FP32 ONNX Runtime with the transformer's attention, layer norms and GELU fused (Olive's CPU "
                "workflow): a lossless speedup, and INT8 afterwards quantizes the fused attention too",
            )
        if size <= 1.0 and goal.objective != "smallest":
            # lossless first: every lossy ONNX step would be measured on this export anyway, and the export
            # alone may meet a speed goal (Diffusion Policy: 9 minutes of rejected INT8 before it did)
            structural = sum(1 for steps, _ in plans if steps[0].technique == "structured_prune")
            export = (export[0], export[1] + "; lossless, so it goes before the lossy steps")
            plans.insert(structural, export)
        else:
            plans.append(export)
    if current.format == "lerobot_policy" and current.sampler == "DDIM":
        # a DDIM policy of up to WHOLE_GRAPH_MAX_STEPS steps exports whole (its noise is a fixed buffer);
        # fewer steps, offered only below the ones it takes now, stay after the lossless export
        plans += _fewer_steps_plans(payload, options)
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
    steps = current.sampler_steps
    if (
        current.format == "lerobot_policy"
        and current.sampler == "DDIM"
        and (steps or 0) > WHOLE_GRAPH_MAX_STEPS
    ):
        return [
            (
                [_step("lerobot_sampler_export")],
                f"DDIM Diffusion Policy of {steps} steps: the whole-graph export unrolls every step (a 50-step "
                "policy took 12 minutes to export); export the encoder and the denoiser with the loop as data "
                "(lossless), which fewer steps and FP16 can follow",
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


WHOLE_GRAPH_MAX_STEPS = 10
"""A DDIM policy of more denoising steps exports as its sampler, not as one unrolled graph: the export's time grows
with the steps (a 50-step test-size policy took 733 s), the sampler's does not, and both are lossless."""


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
    running = payload.current.sampler_steps
    if running is not None:  # only fewer steps than the policy samples with now are fewer
        counts = [n for n in counts if n < running]
        if not counts:
            return []
    closing = [n for n in counts if (running or counts[0]) / n >= speed] or counts[-1:]
    # then the larger counts, nearest first: each gives back less speed than the next for the accuracy it keeps
    ordered = [n for n in counts if n <= closing[0]] + sorted(n for n in counts if n > closing[0])
    return [
        (
            [_step("lerobot_fewer_steps", num_inference_steps=steps)],
            f"DDIM in {steps} denoising steps: speed still {speed:.1f}x short after the lossless sampler export; "
            "lossy, judged by action agreement",
        )
        for steps in ordered
    ]


def fusable(payload: PlanningInput, options: dict[str, TechniqueOption]) -> bool:
    """Whether the current version is a Hugging Face transformer that ONNX Runtime's fusions recognize."""
    return (
        "ort_transformer_fusion" in options
        and payload.current.format == "hf_directory"
        and payload.analysis.architecture == "transformer"
    )


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


def _finish(
    payload: PlanningInput, rule: SearchStopRule, rationale: str, untried: list[Prediction] | None = None
) -> PlanStep:
    """A 'finish' step that records the rule that stopped the search."""
    return PlanStep(action="finish", rationale=rationale, stop=search_stop(rule, rationale, payload, untried))


def plan_rules(payload: PlanningInput) -> PlanStep:
    """Finish when the goal asks to stop at the first version that meets it, when accuracy is missed or nothing
    untried can help; once a version meets every criterion, search for a better one while a candidate's
    predicted gain beats noise; else the best next attempt towards the goal."""
    goal, check = payload.goal, payload.check
    version = payload.current.version_id
    if check.passed and goal.stop_at_first:
        return _finish(
            payload,
            "goal_met_stop_at_first",
            f"version {version} meets every criterion; the goal asks to stop at the first version that does",
        )
    accuracy_missing = [r for r in check.missing if r.name in ("accuracy_floor", "max_accuracy_drop")]
    if accuracy_missing:
        return _finish(
            payload,
            "accuracy_missed",
            f"version {version} misses the accuracy criterion ({accuracy_missing[0].note}); "
            "compression cannot raise accuracy",
        )
    if payload.attempts_left <= 0:
        return _finish(payload, "attempts_spent", "no attempts left in the budget")
    best = payload.best or (payload.current if check.passed else None)
    if best is not None:
        return _improve(payload, best)
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
        return _finish(
            payload,
            "nothing_untried",
            f"no untried technique can improve version {version}{tried} further (still missing: {missing})",
        )
    steps, why = plans[0]
    return PlanStep(
        action="apply",
        steps=steps,
        rationale=why,
        then=["+".join(step.technique for step in later) for later, _ in plans[1:3]],
        start_from=start_from,
    )


def _improving_goals(payload: PlanningInput) -> list[PlanningInput]:
    """The payload as the candidate rules see a search for the goal's priority: 'fastest' for latency,
    'smallest' for size, both (fastest first) for Pareto dominance."""
    objectives = {"latency": ["fastest"], "size": ["smallest"], "pareto": ["fastest", "smallest"]}
    return [
        payload.model_copy(update={"goal": payload.goal.model_copy(update={"objective": objective})})
        for objective in objectives[payload.goal.priority]
    ]


def _with_quantization(
    plans: list[tuple[list[PlannedTechnique], str]],
) -> list[tuple[list[PlannedTechnique], str]]:
    """Structural chains (prune, distill) followed by the first single quantization step planned beside them:
    a pruned float model is rarely better than a quantized one, the pruned and quantized one can be (the
    evals' oracle finds structured pruning + 4-bit weights on the conv policy)."""
    quantize = next(
        (steps for steps, _ in plans if len(steps) == 1 and steps[0].technique in QUANTIZED_BY), None
    )
    if quantize is None:
        return []
    return [
        (steps + quantize, f"{why}, then {quantize[0].technique}")
        for steps, why in plans
        if steps[0].technique == "structured_prune" and len(steps) + len(quantize) <= 3
    ]


SPACE_MAX_STEPS = 2
"""Search-space chains the improvement search predicts: 1-2 steps (three-step chains are the rules' prune +
distill + quantize, which need the rules' parameters)."""
SPACE_VARIANTS = 3
"""Configs per step taken from its declared `search` ranges: the defaults and two variants."""
LOSSY_FIDELITY = 0.99
"""A search-space chain whose steps' output cosines, measured on the closest reference model, multiply to less
than this is not predicted to keep accuracy: it is left out (the rules still plan pruning with distillation)."""
STRUCTURAL_FAMILIES = ("pruning", "compression", "architecture_search", "distillation")


def space_exclusions(payload: PlanningInput, source: VersionSummary) -> dict[str, str]:
    """Techniques the search space leaves out for chains from `source`, each with its reason as a measured fact
    or a rule of the evaluation: slower than FP32 where measured, needing labels the job lacks, quantizing a
    quantized version, structural steps without a float model (or, when they train, without real data or
    time), a structural failure."""
    architecture = payload.analysis.architecture
    reference = REFERENCE_FOR.get(architecture)
    where = f"the {reference} reference model" if reference else "the reference models (median)"
    criteria = payload.goal.criteria
    latency_matters = payload.goal.priority != "size" or bool(criteria.max_latency_ms or criteria.min_speedup)
    quantized = any(name in QUANTIZED_BY for name in source.lineage)
    ruled = ruled_out_techniques(payload.attempts)
    excluded: dict[str, str] = {}
    for option in payload.techniques:
        speed, _ = option.expected(architecture)
        structural = option.family in STRUCTURAL_FAMILIES
        if option.name in ruled:
            excluded[option.name] = f"failed on this model's structure: {ruled[option.name][:120]}"
        elif speed is not None and speed < 1.0:
            why = (
                "latency matters to this goal" if latency_matters else "the evaluation rejects a slower step"
            )
            excluded[option.name] = f"measured {speed:.2f}x FP32's speed on {where}: slower, and {why}"
        elif option.needs_labels and not payload.has_labels:
            excluded[option.name] = "needs labelled data; the job has none"
        elif quantized and option.name in QUANTIZED_BY:
            excluded[option.name] = f"version {source.version_id} is already quantized"
        elif structural and quantized:
            excluded[option.name] = (
                f"version {source.version_id} is quantized: structural steps take a float model"
            )
        elif structural and option.needs_calibration and payload.calibration == "synthetic":
            excluded[option.name] = "trains on observations, and the job has only synthetic inputs"
        elif structural and option.needs_calibration and payload.seconds_left < STRUCTURAL_MIN_SECONDS:
            excluded[option.name] = (
                f"trains within the job's time: needs at least {STRUCTURAL_MIN_SECONDS:.0f} s left"
            )
    return excluded


def space_chains(payload: PlanningInput, source: VersionSummary) -> list[tuple[list[PlannedTechnique], str]]:
    """Untried chains of the one search space (`tools.techniques.search_space`) from `source`, with parameter
    values from the declared ranges, less the excluded techniques and the chains predicted too lossy."""
    architecture = payload.analysis.architecture
    options = {option.name: option for option in payload.techniques}
    tried = [a.steps for a in payload.attempts if a.parent_version == source.version_id]
    space = candidate_chains(
        source.format,
        max_steps=SPACE_MAX_STEPS,
        tried=tried,
        exclude=space_exclusions(payload, source),
        variants_per_step=SPACE_VARIANTS,
        only=options,
    )
    plans = []
    for chain in space.chains:
        if sum(1 for step in chain if step["type"] in QUANTIZED_BY) > 1:
            continue  # quantizing a quantized (or palettized) model again is refused
        fidelity = 1.0
        for step in chain:
            fidelity *= options[str(step["type"])].expected_fidelity(architecture) or 1.0
        if fidelity < LOSSY_FIDELITY:
            continue
        steps = [
            PlannedTechnique(
                technique=str(step["type"]), params={k: v for k, v in step.items() if k != "type"}
            )
            for step in chain
        ]
        names = "+".join(step.technique for step in steps)
        params = "; ".join(
            f"{step.technique} {', '.join(f'{k}={v}' for k, v in step.params.items())}"
            for step in steps
            if step.params
        )
        plans.append(
            (
                steps,
                f"search space: {names}{f' ({params})' if params else ''}, output cosine {fidelity:.4f} "
                "measured on the closest reference model",
            )
        )
    return plans


def improvement_predictions(payload: PlanningInput, best: VersionSummary) -> list[Prediction]:
    """Every untried chain from the current version (and the unquantized base, when the current one is
    quantized) with its predicted gain over the best passing version, highest first: the rules' chains (with
    their expert parameters) and the search space's (every available technique not excluded, with parameter
    values from the declared ranges); on equal gains the rules' chain comes first."""
    sources = [payload.current]
    base = payload.float_base
    if base is not None and base.version_id != payload.current.version_id:
        sources.append(base)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    predictions: list[Prediction] = []
    for source in sources:
        branch = payload if source is payload.current else payload.model_copy(update={"current": source})
        plans: list[tuple[list[PlannedTechnique], str]] = []
        for improving in _improving_goals(branch):
            found = candidate_attempts(improving)
            plans += found + _with_quantization(found)
        plans += space_chains(branch, source)
        for steps, why in plans:
            key = (source.version_id, canonical_chain(step.config_json() for step in steps))
            if key in seen or _tried(branch, steps):
                continue
            seen.add(key)
            if source is not payload.current:
                why = f"from version {source.version_id} (not quantized): {why}"
            predictions.append(predict(payload, source, best, steps, why))
    return sorted(predictions, key=lambda p: -p.gain)


CANDIDATES_SHOWN = 12
"""Rows of the candidate table the planner (the LLM's prompt) is shown."""


def ranked_candidates(payload: PlanningInput) -> list[RankedCandidate]:
    """The candidate table: the untried chains with the highest predicted gain on the goal's priority over the
    best passing version, or over the current version while none passes."""
    yardstick = payload.best or payload.current
    return [p.ranked() for p in improvement_predictions(payload, yardstick)[:CANDIDATES_SHOWN]]


def _improve(payload: PlanningInput, best: VersionSummary) -> PlanStep:
    """The goal is met by `best`: the untried chain with the highest predicted gain on the priority, or the rule
    that stops the search (improvement budget spent, nothing untried, best gain below noise)."""
    priority = payload.goal.priority
    predictions = improvement_predictions(payload, best)
    met = f"version {best.version_id} meets every criterion"
    if payload.goal.objective == "meet" and payload.improvement_attempts >= MAX_IMPROVEMENT_ATTEMPTS:
        # a goal that names its limits gets a bounded search beyond them; 'fastest' / 'smallest' asked for it
        return _finish(
            payload,
            "attempts_spent",
            f"{met}; the {MAX_IMPROVEMENT_ATTEMPTS} attempts allowed for finding a better one after that are spent",
            predictions,
        )
    if not predictions:
        return _finish(
            payload, "nothing_untried", f"{met}; no untried chain is left to look for a {describe(priority)}"
        )
    top, threshold = predictions[0], noise_threshold(priority)
    if top.gain < threshold:
        return _finish(
            payload,
            "gain_below_noise",
            f"{met}; the best untried chain, {top.chain} from version {top.start_from}, is predicted "
            f"{top.gain:+.1%} on {priority} over it, below the {threshold:.0%} measurement noise",
            predictions,
        )
    start_from = top.start_from if top.start_from != payload.current.version_id else None
    figures = ", ".join(
        part
        for part in (
            f"{top.speedup:.2f}x its speed" if top.speedup else "",
            f"{top.compression:.2f}x its compression" if top.compression else "",
        )
        if part
    )
    return PlanStep(
        action="apply",
        steps=top.steps,
        rationale=f"{met}; looking for a {describe(priority)}: {top.rationale} (predicted {figures} against "
        f"version {best.version_id}, {top.gain:+.0%} on {priority})",
        then=[p.chain for p in predictions[1:3] if p.gain >= threshold],
        start_from=start_from,
    )
