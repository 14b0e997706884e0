"""Planning: choose the next attempt (one technique, or a short chain judged as one) from the registry's
available techniques, given the goal, the analysis, the current version and every earlier attempt.

The rules live in `agents.planning_rules`; the LLM gets the `planning` prompt. Both answer with a `PlanStep`
that `check_plan` validates against the registry, so neither can choose a technique that does not exist here,
does not take the current format, or was already tried on the same version.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.analysis import Analysis
from agents.base import AgentSpec
from agents.intake import GoalSpec
from tools.errors import RoboptError, ValidationError
from tools.evaluation.criteria import CriteriaCheck
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import SearchStop
from tools.evaluation.sensitivity import LayerSensitivity
from tools.techniques.search_space import WALL_TIME_PARAMETERS

QUANTIZED_BY = {
    "ort_int8_dynamic",
    "ort_int8_static",
    "ort_matmul_4bits",
    "onnx_fp16",
    "torch_fp16_cast",
    "torch_bf16_cast",
    "torchao_int8_weight_only",
    "torchao_int8_dynamic",
    "torchao_intx_weight_only",
    "bnb_int8",
    "bnb_4bit",
    "gptq",
    "weight_clustering",
}
"""Techniques whose output is already quantized (or palettized): quantizing it again is refused."""

REFERENCE_FOR = {
    "vla": "vla",
    "visual_policy": "vla",
    "vlm": "hf_llama",
    "transformer": "hf_llama",
    "cnn": "conv_policy",
    "mlp": "conv_policy",
}
"""Which benchmarked reference model's measured effects best predict a model of each architecture kind."""


class TechniqueOption(BaseModel):
    """A technique the planner may choose, with what the registry says of it and its measured effect."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    summary: str
    input_formats: list[str]
    output_format: str
    precision: str
    needs_calibration: bool = False
    needs_labels: bool = False
    speedup: float | None = Field(
        default=None, description="Median measured speedup on the reference models."
    )
    size_ratio: float | None = Field(
        default=None, description="Median measured artifact size after / before."
    )
    fidelity: float | None = Field(default=None, description="Median measured output cosine to the source.")
    effects: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Measured effect per reference model (vla, conv_policy, hf_llama): speedup, size_ratio, "
        "fidelity_cosine.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Config fields: default, description and search range when declared.",
    )

    def expected(self, architecture: str) -> tuple[float | None, float | None]:
        """(speedup, size ratio) measured on the reference model closest to `architecture`, else the medians."""
        reference = REFERENCE_FOR.get(architecture)
        effect = self.effects.get(reference) if reference else None
        if effect:
            return effect.get("speedup"), effect.get("size_ratio")
        return self.speedup, self.size_ratio

    def expected_fidelity(self, architecture: str) -> float | None:
        """Output cosine to the source measured on the reference model closest to `architecture`, else the
        median."""
        reference = REFERENCE_FOR.get(architecture)
        effect = self.effects.get(reference) if reference else None
        if effect and effect.get("fidelity_cosine") is not None:
            return effect["fidelity_cosine"]
        return self.fidelity


class VersionSummary(BaseModel):
    """The version the next attempt starts from."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    format: str
    lineage: list[str] = Field(default_factory=list, description="Techniques applied since the original.")
    sampler: str | None = Field(
        default=None,
        description="The noise scheduler ('DDPM', 'DDIM') when the version is a LeRobot Diffusion Policy directory: "
        "DDPM draws noise at every step, so it exports as a sampler (lerobot_sampler_export), not one graph.",
    )
    sampler_steps: int | None = Field(
        default=None,
        description="The denoising steps the Diffusion Policy directory (its config) or its exported sampler "
        "(its sampler.json) takes now; fewer-steps plans only offer counts below it.",
    )
    measurement: Measurement


class AttemptSummary(BaseModel):
    """An earlier attempt as the planner sees it."""

    model_config = ConfigDict(frozen=True)

    index: int
    parent_version: str
    steps: list[dict[str, Any]] = Field(description="Each step's config as JSON (with its 'type').")
    status: Literal["accepted", "rejected", "failed"]
    reason: str
    speedup: float | None = Field(default=None, description="Parent p50 / candidate p50 on the target.")
    compression: float | None = Field(default=None, description="Parent bytes / candidate bytes.")
    accuracy: float | None = Field(default=None, description="The candidate's headline accuracy value.")
    passed: bool = Field(default=False, description="The candidate met every criterion of the goal.")


class PlannedTechnique(BaseModel):
    """One technique of the attempt: its registry name and its config fields (without 'type')."""

    model_config = ConfigDict(frozen=True)

    technique: str
    params: dict[str, Any] = Field(default_factory=dict)

    def config_json(self) -> dict[str, Any]:
        """The config as the registry parses it."""
        return {**self.params, "type": self.technique}


class RankedCandidate(BaseModel):
    """An untried chain with its predicted figures, as the planner's candidate table ranks it."""

    model_config = ConfigDict(frozen=True)

    steps: list[PlannedTechnique]
    start_from: str = Field(description="The version the chain would start from ('start_from' in the plan).")
    rationale: str
    predicted_speedup: float | None = Field(
        description="Yardstick version's p50 / the chain's predicted p50 (estimated from measured effects)."
    )
    predicted_compression: float | None = Field(
        description="Yardstick version's bytes / the chain's predicted bytes (estimated)."
    )
    predicted_gain: float = Field(description="Predicted relative gain on the goal's priority (0: none).")


class PlanningInput(BaseModel):
    """What the planner decides from."""

    model_config = ConfigDict(frozen=True)

    goal: GoalSpec
    analysis: Analysis
    baseline: Measurement
    current: VersionSummary
    check: CriteriaCheck = Field(description="The current version's criteria check against the baseline.")
    attempts: list[AttemptSummary] = Field(default_factory=list)
    sensitivity: list[LayerSensitivity] = Field(
        default_factory=list, description="Per-layer INT8 sensitivity of the original, most sensitive first."
    )
    float_base: VersionSummary | None = Field(
        default=None,
        description="The latest accepted version that is not quantized (the original, or its FP32 export) when "
        "the current version is quantized: lossy chains never tried on it can start from it (`start_from`).",
    )
    best: VersionSummary | None = Field(
        default=None,
        description="The best version so far that meets every criterion (fastest for a latency priority, "
        "smallest for a size priority); None while none does. Once set, the search looks for a better one.",
    )
    improvement_attempts: int = Field(
        default=0, ge=0, description="Attempts made since a version first met every criterion."
    )
    techniques: list[TechniqueOption]
    candidates: list[RankedCandidate] = Field(
        default_factory=list,
        description="Untried chains from the current version (and the float base), ranked by predicted gain on the "
        "goal's priority over `best` (over `current` while no version meets the goal): the rules' chains and the "
        "search space's, every available technique not excluded. Estimates from measured effects, not measurements.",
    )
    attempts_left: int
    seconds_left: float
    calibration: Literal["synthetic", "data", "reference"] = Field(
        default="synthetic",
        description="'synthetic': random inputs shaped like the model's; 'data'/'reference': real observations.",
    )
    has_labels: bool = False


class PlanStep(BaseModel):
    """The next attempt (`apply`, with 1-3 chained techniques judged together) or `finish`."""

    model_config = ConfigDict(frozen=True)

    action: Literal["apply", "finish"]
    steps: list[PlannedTechnique] = Field(default_factory=list, max_length=3)
    rationale: str = Field(description="Why this, now: the figures and rules that chose it.")
    then: list[str] = Field(
        default_factory=list, description="What is planned after this attempt, if it is kept."
    )
    start_from: str | None = Field(
        default=None,
        description="Version the steps apply to: None for the current version, or the float_base version's id "
        "to try a chain from the unquantized model when the current (quantized) one leaves nothing to try.",
    )
    stop: SearchStop | None = Field(
        default=None,
        description="With 'finish': the rule that stopped the search, and the chains left untried with their "
        "predicted gains.",
    )


def same_steps(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two step lists are the same configs (defaults filled in, wall-time budgets ignored)."""
    from tools.techniques import parse_config

    def canonical(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        dumped = [parse_config(step).model_dump() for step in steps]
        return [{k: v for k, v in step.items() if k not in WALL_TIME_PARAMETERS} for step in dumped]

    try:
        return canonical(a) == canonical(b)
    except RoboptError:
        return a == b


TRANSIENT_FAILURES = (
    "child_timeout",
    "child_memory",
    "child_cancelled",
    "resource_error",
    "measurement_error",
)


def ruled_out_techniques(attempts: list[AttemptSummary]) -> dict[str, str]:
    """Techniques a structural failure ruled out for this model: technique -> the failure's reason.

    A technique that failed on the model's structure (an operator it cannot handle, a layer it cannot cut) fails
    again with other parameters, so it is not retried; a time-out or an out-of-memory kill is not structural.
    The failing step is the one the reason names, else the chain's first step.
    """
    ruled: dict[str, str] = {}
    for attempt in attempts:
        if attempt.status != "failed" or not attempt.steps:
            continue
        code = attempt.reason[1:].split("]", 1)[0] if attempt.reason.startswith("[") else ""
        if code in TRANSIENT_FAILURES:
            continue
        types = [str(step.get("type", "")) for step in attempt.steps]
        named = [name for name in types if name and name in attempt.reason]
        for name in named or types[:1]:
            ruled.setdefault(name, attempt.reason)
    return ruled


def check_plan(payload: PlanningInput, plan: PlanStep) -> None:
    """Refuse a plan the registry cannot run: unknown or unavailable technique, a format a step does not take,
    invalid params, or a repeat of an attempt already made on the same version."""
    from tools.techniques import parse_config

    if plan.action == "finish":
        return
    if not plan.steps:
        raise ValidationError("an 'apply' plan needs at least one step")
    options = {option.name: option for option in payload.techniques}
    start = plan_source(payload, plan)
    fmt = start.format
    quantized = any(name in QUANTIZED_BY for name in start.lineage)
    for step in plan.steps:
        option = options.get(step.technique)
        if option is None:
            raise ValidationError(
                f"technique {step.technique!r} is not available here; choose from {sorted(options)}"
            )
        if fmt not in option.input_formats:
            raise ValidationError(
                f"{step.technique} does not take {fmt} (it takes {', '.join(option.input_formats)})"
            )
        if quantized and step.technique in QUANTIZED_BY:
            done = [name for name in start.lineage if name in QUANTIZED_BY] + [
                s.technique for s in plan.steps[: plan.steps.index(step)] if s.technique in QUANTIZED_BY
            ]
            raise ValidationError(
                f"version {start.version_id} is already quantized, or quantized earlier in the chain "
                f"({', '.join(done)}); {step.technique} would quantize it again"
            )
        if option.needs_labels and not payload.has_labels:
            raise ValidationError(f"{step.technique} needs labelled data and the job has none")
        parse_config(step.config_json())
        fmt = option.output_format
        quantized = quantized or step.technique in QUANTIZED_BY
    ruled = ruled_out_techniques(payload.attempts)
    for step in plan.steps:
        if step.technique in ruled:
            raise ValidationError(
                f"{step.technique} failed on this model's structure and is not retried with other "
                f"parameters: {ruled[step.technique][:200]}"
            )
    wanted = [step.config_json() for step in plan.steps]
    for attempt in payload.attempts:
        if attempt.parent_version == start.version_id and same_steps(attempt.steps, wanted):
            raise ValidationError(
                f"attempt {attempt.index} already tried {[s['type'] for s in wanted]} on version "
                f"{start.version_id} ({attempt.status}: {attempt.reason})"
            )


def plan_source(payload: PlanningInput, plan: PlanStep) -> VersionSummary:
    """The version a plan's steps apply to: the current one, or the float base it names in `start_from`."""
    if plan.start_from is None or plan.start_from == payload.current.version_id:
        return payload.current
    if payload.float_base is not None and plan.start_from == payload.float_base.version_id:
        return payload.float_base
    allowed = [payload.current.version_id] + ([payload.float_base.version_id] if payload.float_base else [])
    raise ValidationError(
        f"start_from {plan.start_from!r} names no version a plan may start from; use {allowed}"
    )


def _plan_rules(payload: PlanningInput) -> PlanStep:
    """Defer to the rule module (kept apart for size)."""
    from agents.planning_rules import plan_rules

    return plan_rules(payload)


PLANNING = AgentSpec(
    name="planning",
    prompt="planning",
    input_type=PlanningInput,
    output_type=PlanStep,
    rules=_plan_rules,
    check=check_plan,
)
