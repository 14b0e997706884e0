"""Hand-built inputs for the analysis, planning and evaluation agents: measurements with round figures, goals,
the registry's real technique options (with pinned INT8 effects), and the payloads the graph would build."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Literal

from agents.analysis import Analysis, AnalysisInput, ModelSummary, analyze_rules
from agents.evaluation import VerdictInput, guards
from agents.intake import GoalSpec
from agents.planning import AttemptSummary, PlanningInput, TechniqueOption, VersionSummary
from tests.tools.evaluation.figures import MB, runtime_figures, size_figures
from tools.evaluation.criteria import Criteria, check_criteria
from tools.evaluation.measurement import Measurement
from tools.evaluation.sensitivity import LayerSensitivity
from tools.evaluation.targets import ProjectedLatency
from tools.evaluation.types import AccuracyLevel, AccuracyResult

TORCH = "torch_pickled_module"
INT8_SPEEDUP = 5.0
"""ORT INT8 speedup pinned on every reference model, so the rules' arithmetic is checkable in the tests."""
INT8_SIZE_RATIO = 0.27
"""ORT INT8 size after / before, pinned likewise: INT8 makes a model 1 / 0.27 = 3.7x smaller."""
LAYERS = {
    "vision.patch_embed": 0.004,
    "vision.blocks.0.mlp": 0.006,
    "language.blocks.0.attn": 0.005,
    "language.blocks.1.mlp": 0.007,
    "action_head.out": 0.09,
    "action_head.proj": 0.05,
    "language.blocks.1.attn": 0.006,
}
"""Per-layer int8 sensitivity of a small VLA: the action head's two layers stand out, the rest is noise."""
OUTLIERS = ["action_head.out", "action_head.proj"]


def measurement(
    version_id: str,
    *,
    p50_ms: float,
    size_mib: float,
    accuracy: float | None = 0.999,
    level: AccuracyLevel = "fidelity",
    metric: str = "min_cosine",
    higher_is_better: bool = True,
    technique: str = "intake",
    projections: Iterable[tuple[str, float]] = (),
) -> Measurement:
    """A version's figures: p50 here in ms, artifact size in MiB, one headline accuracy, optional projections."""
    return Measurement(
        version_id=version_id,
        technique=technique,
        accuracy=(
            AccuracyResult(level=level, metric=metric, value=accuracy, higher_is_better=higher_is_better)
            if accuracy is not None
            else None
        ),
        runtime=runtime_figures(p50_ms, peak_rss_mb=500.0),
        size=size_figures(int(size_mib * MB)),
        projections=[
            ProjectedLatency(
                target=target, latency_ms=ms, estimated=True, method="roofline", precision="fp32", batch=1
            )
            for target, ms in projections
        ],
    )


def goal(objective: Literal["meet", "fastest", "smallest"] = "meet", **criteria: Any) -> GoalSpec:
    """A parsed goal with the given criteria fields, reporting on the latency target."""
    parsed = Criteria(**criteria)
    return GoalSpec(criteria=parsed, objective=objective, targets=[parsed.latency_target])


def sensitivity(scores: dict[str, float]) -> list[LayerSensitivity]:
    """Quantization sensitivity ranked most sensitive first, as tools.evaluation.sensitivity returns it."""
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    return [
        LayerSensitivity(
            name=name,
            analysis="quantization",
            perturbation="int8 per-channel symmetric RTN weights",
            layer_type="Linear",
            score=score,
            metric="relative_l2",
            params=4096,
            layers=[name],
        )
        for name, score in ranked
    ]


@lru_cache(maxsize=1)
def _registry_options() -> tuple[TechniqueOption, ...]:
    """The registry's available techniques as the plan node lists them (read once: it imports every backend)."""
    from graph.nodes.plan import technique_options

    return tuple(technique_options())


def registry_options(
    int8_speedup: float = INT8_SPEEDUP, int8_size_ratio: float = INT8_SIZE_RATIO
) -> list[TechniqueOption]:
    """The real technique options, with ort_int8_dynamic's measured effects pinned on every reference model."""
    pinned = {"speedup": int8_speedup, "size_ratio": int8_size_ratio, "fidelity_cosine": 0.999}
    options = []
    for option in _registry_options():
        if option.name == "ort_int8_dynamic":
            option = option.model_copy(
                update={
                    "speedup": int8_speedup,
                    "size_ratio": int8_size_ratio,
                    "effects": {model: dict(pinned) for model in ("vla", "conv_policy", "hf_llama")},
                }
            )
        options.append(option)
    return options


def analysis_input(
    goal_spec: GoalSpec,
    baseline: Measurement,
    *,
    architecture: str = "vla",
    fmt: str = TORCH,
    layers: dict[str, float] | None = None,
    available: Iterable[str] | None = None,
    floor_ms: float | None = None,
    floor_bound: Literal["compute", "memory"] | None = None,
) -> AnalysisInput:
    """What the analyze node hands the analysis agent for a small model of `architecture`."""
    names = [option.name for option in registry_options()] if available is None else list(available)
    return AnalysisInput(
        goal=goal_spec,
        model=ModelSummary(name="tiny-vla", format=fmt, params=2_000_000, architecture=architecture),
        baseline=baseline,
        floor_ms=floor_ms,
        floor_bound=floor_bound,
        quantization_sensitivity=sensitivity(LAYERS if layers is None else layers),
        available_techniques=names,
    )


def attempt(
    index: int,
    parent: str,
    steps: list[dict[str, Any]],
    status: Literal["accepted", "rejected", "failed"] = "rejected",
    reason: str = "accuracy: max_accuracy_drop: min_cosine 0.999 -> 0.95 (limit 1)",
) -> AttemptSummary:
    """An earlier attempt made on version `parent`."""
    return AttemptSummary(index=index, parent_version=parent, steps=steps, status=status, reason=reason)


def planning_input(
    goal_spec: GoalSpec,
    baseline: Measurement,
    *,
    current: Measurement | None = None,
    fmt: str = TORCH,
    lineage: Iterable[str] = (),
    attempts: Iterable[AttemptSummary] = (),
    techniques: list[TechniqueOption] | None = None,
    calibration: Literal["synthetic", "data", "reference"] = "synthetic",
    has_labels: bool = False,
    attempts_left: int = 8,
    seconds_left: float = 900.0,
    architecture: str = "vla",
    analysis: Analysis | None = None,
) -> PlanningInput:
    """What the plan node hands the planner: the current version (the baseline unless given) and its check."""
    current = current or baseline
    options = registry_options() if techniques is None else techniques
    if analysis is None:
        analysis = analyze_rules(
            analysis_input(
                goal_spec, baseline, architecture=architecture, available=[o.name for o in options]
            )
        )
    return PlanningInput(
        goal=goal_spec,
        analysis=analysis,
        baseline=baseline,
        current=VersionSummary(
            version_id=current.version_id, format=fmt, lineage=list(lineage), measurement=current
        ),
        check=check_criteria(goal_spec.criteria, baseline, current),
        attempts=list(attempts),
        techniques=options,
        attempts_left=attempts_left,
        seconds_left=seconds_left,
        calibration=calibration,
        has_labels=has_labels,
    )


def verdict_input(
    goal_spec: GoalSpec,
    baseline: Measurement,
    parent: Measurement,
    candidate: Measurement,
    steps: Iterable[str] = ("ort_int8_dynamic",),
) -> VerdictInput:
    """What the evaluate node hands the evaluation agent: both criteria checks and the hard guards."""
    check = check_criteria(goal_spec.criteria, baseline, candidate)
    parent_check = check_criteria(goal_spec.criteria, baseline, parent)
    return VerdictInput(
        goal=goal_spec,
        steps=list(steps),
        baseline=baseline,
        parent=parent,
        candidate=candidate,
        check=check,
        parent_check=parent_check,
        guards=guards(goal_spec, parent, candidate, check, parent_check),
    )
