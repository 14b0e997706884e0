"""plan: choose the next attempt (or finish) from the available techniques, the analysis and every attempt."""

from __future__ import annotations

import statistics
from typing import Any, Awaitable, Callable

from langgraph.runtime import Runtime

from agents.base import Reasoner
from agents.planning import (
    PLANNING,
    QUANTIZED_BY,
    AttemptSummary,
    PlanningInput,
    PlanStep,
    TechniqueOption,
    VersionSummary,
)
from agents.planning_rules import ranked_candidates
from graph.context import GraphContext, attempts_left, seconds_left
from graph.events import emit
from graph.nodes.intake import decision_note
from graph.search import best_passing, improvement_attempts
from graph.state import JobState, VersionPoint
from tools.evaluation.criteria import check_criteria
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import SearchStop, SearchStopRule
from tools.intake.detect import diffusion_inference_steps, diffusion_scheduler
from tools.techniques import list_techniques


def technique_options() -> list[TechniqueOption]:
    """Every available technique with its registry metadata and median measured effect."""
    options = []
    for info in list_techniques():
        if not info.available:
            continue
        spec, effects = info.spec, list((info.measured or {}).values())

        def median(key: str) -> float | None:
            values = [e[key] for e in effects if isinstance(e, dict) and e.get(key) is not None]
            return round(statistics.median(values), 4) if values else None

        properties = info.config_schema.get("properties", {})
        options.append(
            TechniqueOption(
                name=spec.name,
                family=spec.family.value,
                summary=spec.summary,
                input_formats=list(spec.input_formats),
                output_format=spec.output_format,
                precision=spec.precision,
                needs_calibration=spec.needs.calibration_data,
                needs_labels=spec.needs.labels,
                speedup=median("speedup"),
                size_ratio=median("size_ratio"),
                fidelity=median("fidelity_cosine"),
                effects={
                    model: {
                        key: float(effect[key])
                        for key in ("speedup", "size_ratio", "fidelity_cosine")
                        if isinstance(effect, dict) and effect.get(key) is not None
                    }
                    for model, effect in (info.measured or {}).items()
                },
                parameters={
                    name: {
                        "default": field.get("default"),
                        "description": field.get("description", ""),
                        **({"search": field["search"]} if "search" in field else {}),
                    }
                    for name, field in properties.items()
                    if name not in ("type", "seed")
                },
            )
        )
    return options


def summarize_attempts(state: JobState, target: str) -> list[AttemptSummary]:
    """Every attempt as the planner sees it, with its speedup on the target and compression over its parent."""
    measured: dict[str, Measurement] = {}
    if state.get("baseline") is not None:
        measured[state["original"].version_id] = state["baseline"]
    summaries = []
    for attempt in state.get("attempts", []):
        parent, after = measured.get(attempt.parent_version), attempt.measurement
        speedup = compression = None
        if parent is not None and after is not None:
            before_ms, after_ms = parent.latency_on(target), after.latency_on(target)
            if before_ms and after_ms and after_ms[0] > 0:
                speedup = round(before_ms[0] / after_ms[0], 3)
            if parent.size and after.size and parent.size.artifact_bytes and after.size.artifact_bytes:
                compression = round(parent.size.artifact_bytes / after.size.artifact_bytes, 3)
        summaries.append(
            AttemptSummary(
                index=attempt.index,
                parent_version=attempt.parent_version,
                steps=attempt.steps,
                status=attempt.status,
                reason=attempt.reason,
                speedup=speedup,
                compression=compression,
                accuracy=after.accuracy.value if after and after.accuracy else None,
                passed=bool(attempt.check is not None and attempt.check.passed),
            )
        )
        if attempt.status == "accepted" and attempt.version is not None and after is not None:
            measured[attempt.version.version_id] = after
    return summaries


def make_plan_node(
    reasoner: Reasoner,
) -> Callable[[JobState, Runtime[GraphContext]], Awaitable[dict[str, Any]]]:
    """Build the plan node around the injected reasoner."""

    async def plan(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        """Stop when the budget is spent; otherwise ask the planning agent for the next attempt."""
        writer = runtime.stream_writer
        goal, current, baseline = state["goal"], state["current"], state["baseline"]
        if goal is None or current is None or baseline is None or state.get("analysis") is None:
            raise RuntimeError("plan reached before intake and analysis")
        left, seconds = attempts_left(state), seconds_left(state)
        if left <= 0 or seconds <= 0:
            why = "attempt budget spent" if left <= 0 else "time budget spent"
            emit(writer, "status", state="budget_spent", message=why)
            rule: SearchStopRule = "attempts_spent" if left <= 0 else "time_spent"
            stop = SearchStop(rule=rule, rationale=why, priority=goal.priority)
            step = PlanStep(action="finish", rationale=why, stop=stop)
            return {"plan": step, "planned_by": "budget", "last_node": "plan", "notes": [why]}
        calibration = options_calibration(state)
        payload = PlanningInput(
            goal=goal,
            analysis=state["analysis"],
            baseline=baseline,
            current=_summary(current),
            check=check_criteria(goal.criteria, baseline, current.measurement),
            attempts=summarize_attempts(state, goal.criteria.latency_target),
            float_base=_summary(base) if (base := float_base(state)) is not None else None,
            best=_summary(best) if (best := best_passing(state)) is not None else None,
            improvement_attempts=improvement_attempts(state),
            sensitivity=state.get("sensitivity", [])[:12],
            techniques=technique_options(),
            attempts_left=left,
            seconds_left=seconds,
            calibration=calibration,
            has_labels=state["options"].accuracy.level == "task" or state["options"].data.kind == "reference",
        )
        payload = payload.model_copy(update={"candidates": ranked_candidates(payload)})
        emit(writer, "status", state="node", node="plan", message="choosing the next attempt")
        decision = await reasoner.decide(PLANNING, payload)
        step = decision.output
        emit(
            writer,
            "status",
            state="planned",
            action=step.action,
            steps=[s.config_json() for s in step.steps],
            rationale=step.rationale,
        )
        update: dict[str, Any] = {
            "plan": step,
            "planned_by": decision.source,
            "last_node": "plan",
            "notes": decision_note(writer, "planning", decision),
        }
        if step.action == "apply" and base is not None and step.start_from == base.ref.version_id:
            # the chain starts from the unquantized version: it becomes the attempt's parent
            emit(
                writer,
                "status",
                state="branched",
                from_version=current.ref.version_id,
                to_version=step.start_from,
            )
            update["current"] = base
            update["notes"] = update["notes"] + [
                f"plan: back to version {base.ref.version_id} (not quantized) to try {'+'.join(s.technique for s in step.steps)}"
            ]
        return update

    return plan


def _summary(point: VersionPoint) -> VersionSummary:
    """A version as the planner sees it."""
    return VersionSummary(
        version_id=point.ref.version_id,
        format=point.ref.format,
        lineage=point.lineage,
        measurement=point.measurement,
        sampler=diffusion_scheduler(point.ref.path) if point.ref.format == "lerobot_policy" else None,
        sampler_steps=(
            diffusion_inference_steps(point.ref.path)
            if point.ref.format in ("lerobot_policy", "lerobot_sampler")
            else None
        ),
    )


def float_base(state: JobState) -> VersionPoint | None:
    """The latest accepted version with no quantization in its lineage (the original, or its FP32 export), when
    the current version is quantized; None otherwise."""
    current, baseline = state["current"], state["baseline"]
    if current is None or baseline is None or not any(name in QUANTIZED_BY for name in current.lineage):
        return None
    base = VersionPoint(ref=state["original"], measurement=baseline, lineage=[])
    lineage: dict[str, list[str]] = {base.ref.version_id: []}
    for attempt in state.get("attempts", []):
        if attempt.status != "accepted" or attempt.version is None or attempt.measurement is None:
            continue
        steps = lineage.get(attempt.parent_version, []) + [str(s["type"]) for s in attempt.steps]
        lineage[attempt.version.version_id] = steps
        if not any(name in QUANTIZED_BY for name in steps):
            base = VersionPoint(ref=attempt.version, measurement=attempt.measurement, lineage=steps)
    return base


def options_calibration(state: JobState) -> str:
    """'data', 'reference' or 'synthetic': what the job's calibration inputs are."""
    kind = state["options"].data.kind
    return "data" if kind in ("file", "lerobot") else kind
