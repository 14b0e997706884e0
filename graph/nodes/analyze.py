"""analyze: measure the original (the baseline), profile it, and reason about where to go."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from langgraph.runtime import Runtime

from agents.analysis import ANALYSIS, AnalysisInput, ComponentShare, ModelSummary
from agents.base import Reasoner
from graph.context import GraphContext, report_targets, run_work
from graph.events import emit
from graph.nodes.intake import decision_note
from graph.state import JobState, VersionPoint
from tools.evaluation.machine import MachineProfile
from tools.evaluation.measurement import Measurement
from tools.evaluation.sensitivity import LayerSensitivity
from tools.evaluation.targets import THIS_MACHINE, preflight, resolve_target
from tools.techniques import list_techniques


def model_summary(name: str, profile: dict[str, Any]) -> ModelSummary:
    """The profile facts the analysis reasons over."""
    params = max(int(profile["parameters"]), 1)
    flops = profile.get("flops")
    components = [
        ComponentShare(
            name=c["name"],
            role=c["role"],
            params=c["parameters"],
            param_share=min(1.0, c["parameters"] / params),
            flops_share=min(1.0, c["flops"] / flops) if flops and c.get("flops") is not None else None,
        )
        for c in profile.get("components", [])
    ]
    architecture = profile["architecture"]
    return ModelSummary(
        name=name,
        format=profile["format"],
        params=params,
        artifact_bytes=profile.get("file_size_bytes"),
        flops=flops,
        architecture=architecture["kind"],
        architecture_summary=architecture.get("summary", ""),
        components=components,
        layer_types={t["layer_type"]: t["parameters"] for t in profile.get("layer_types", [])},
        transformer_blocks=sum(s["blocks"] for s in architecture.get("transformer_stacks", [])),
        conv_flops_share=conv_flops_share(profile),
    )


def conv_flops_share(profile: dict[str, Any]) -> float | None:
    """Share of the counted FLOPs in convolutions (aten convolution ops, ONNX Conv/ConvInteger/QLinearConv)."""
    by_op = profile.get("flops_by_op") or []
    total = sum(int(item["flops"]) for item in by_op)
    if total <= 0:
        return None
    conv = sum(int(item["flops"]) for item in by_op if "conv" in str(item["op"]).lower())
    return round(conv / total, 4)


def make_analyze_node(
    reasoner: Reasoner,
) -> Callable[[JobState, Runtime[GraphContext]], Awaitable[dict[str, Any]]]:
    """Build the analyze node around the injected reasoner."""

    async def analyze(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        """Measure and profile the original in a child process, then ask the analysis agent."""
        writer = runtime.stream_writer
        options, goal = state["options"], state["goal"]
        if goal is None:
            raise RuntimeError("analyze reached without a parsed goal")
        emit(writer, "status", state="node", node="analyze", message="measuring and profiling the original")
        targets = report_targets(state)
        figures = await run_work(
            runtime.context,
            writer,
            state,
            "analyze",
            "profile_original",
            {
                "ref": state["original"],
                "plan": options.accuracy,
                "data": options.data,
                "targets": targets,
                "threads": options.latency_threads,
                "iterations": options.latency_iterations,
            },
        )
        baseline: Measurement = figures["baseline"]
        summary = model_summary(options.model.name, figures["profile"])
        machine = MachineProfile.model_validate(figures["machine"])
        feasibility = []
        for name in targets:
            if name == THIS_MACHINE:
                continue
            target = resolve_target(name, machine)
            for precision in ("fp32", "int8"):
                if precision in target.precisions:
                    feasibility.append(preflight(target, precision, params=summary.params))
        payload = AnalysisInput(
            goal=goal,
            model=summary,
            baseline=baseline,
            floor_ms=figures["floor_ms"],
            floor_bound=figures["floor_bound"],
            quantization_sensitivity=[
                LayerSensitivity.model_validate(x) for x in figures["quantization_sensitivity"]
            ],
            pruning_sensitivity=[LayerSensitivity.model_validate(x) for x in figures["pruning_sensitivity"]],
            feasibility=feasibility,
            available_techniques=[info.spec.name for info in list_techniques() if info.available],
        )
        decision = await reasoner.decide(ANALYSIS, payload)
        # a measured fact, never the reasoner's: the planner reads it to cover Conv-heavy FLOPs
        analysis = decision.output.model_copy(update={"conv_flops_share": summary.conv_flops_share})
        emit(writer, "status", state="analyzed", summary=analysis.summary)
        return {
            "baseline": baseline,
            "analysis": analysis,
            "sensitivity": payload.quantization_sensitivity,
            "current": VersionPoint(ref=state["original"], measurement=baseline, lineage=[]),
            "last_node": "analyze",
            "notes": list(figures.get("notes", [])) + decision_note(writer, "analysis", decision),
        }

    return analyze
