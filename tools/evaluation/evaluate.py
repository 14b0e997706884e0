"""Measure one stored version end to end: accuracy at the planned level, latency and memory here, size,
FLOPs and projections to the requested targets, as one `Measurement` the graph can store.

This is what the optimization loop's evaluate step calls for every version, the original included, so that
baseline and candidate are always measured the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ValidationError
from tools.evaluation.closed_loop import evaluate_closed_loop
from tools.evaluation.fidelity import (
    batches_digest,
    cosine_figure,
    measure_fidelity,
    synthetic_held_out,
)
from tools.evaluation.machine import MachineProfile
from tools.evaluation.measurement import Measurement
from tools.evaluation.priority import BestToBeat
from tools.evaluation.runners import RuntimeName, measure_runtime
from tools.evaluation.size import size_of_loaded
from tools.evaluation.targets import THIS_MACHINE, canonical_target_name, project_latency, resolve_target
from tools.evaluation.task_metrics import TaskKind, measure_task
from tools.evaluation.types import AccuracyLevel, AccuracyResult
from tools.intake import LoadedModel, LoadOptions
from tools.latency import DEFAULT_TIMEOUT_S
from tools.log import get_logger
from tools.techniques.artifacts import load_manifest
from tools.techniques.base import CalibrationData
from tools.versions import VersionManifest, VersionStore

_log = get_logger("evaluation")


class AccuracyPlan(BaseModel):
    """Which accuracy to measure, chosen once per job so every version is judged the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: AccuracyLevel = Field(
        description="fidelity (no data), task (labelled data), closed_loop (success rate) or "
        "closed_loop_agreement (actions and trajectories against the original's in the simulator)."
    )
    task_kind: TaskKind = Field(default="actions", description="For 'task': actions, tokens or classes.")
    tolerance: float | None = Field(default=None, gt=0, description="For 'task' actions: success tolerance.")
    simulator: str | None = Field(default=None, description="For 'closed_loop*': a simulator plugin name.")
    episodes: int = Field(default=100, ge=1, le=100_000, description="For 'closed_loop': episodes.")
    seed: int = Field(default=10_000, ge=0, description="For 'closed_loop': seed of the first episode.")
    judge_actions: bool = Field(
        default=False,
        description="For 'fidelity' on a policy (tools.evaluation.policy.is_policy): judge by the action error "
        "over whole chunks (action_rel_error, lower is better); the output cosine is reported beside it.",
    )


def measure_accuracy(
    plan: AccuracyPlan,
    model: LoadedModel,
    *,
    reference: LoadedModel | None = None,
    data: CalibrationData | None = None,
    reference_cache: Path | None = None,
) -> AccuracyResult:
    """Measure `model`'s accuracy as the plan says; fidelity and closed-loop agreement need the original as
    `reference`. `reference_cache` (a directory) keeps the reference's fidelity outputs, one file per data."""
    if plan.level == "fidelity":
        if reference is None:
            raise ValidationError("fidelity needs the original model as the reference")
        batches = data.batches if data is not None else synthetic_held_out(reference, reference_cache)
        cache = reference_cache / f"{batches_digest(batches)}.pt" if reference_cache is not None else None
        return measure_fidelity(reference, model, batches, actions=plan.judge_actions, reference_cache=cache)
    if plan.level == "task":
        if data is None or data.labels is None:
            raise ValidationError(
                "a task metric needs labelled data and none was given",
                hint="give inputs with targets (e.g. an .npz with an 'actions' array), or measure fidelity",
            )
        return measure_task(model, data.batches, data.labels, plan.task_kind, tolerance=plan.tolerance)
    if plan.simulator is None:
        raise ValidationError("closed-loop accuracy needs a simulator plugin name (e.g. 'reaching')")
    if plan.level == "closed_loop_agreement":
        return _agreement(plan, model, reference)
    return evaluate_closed_loop(model, plan.simulator, plan.episodes, plan.seed)


LATENCY_RESERVE_S = 15.0  # of a bounded step, kept back from latency for size, FLOPs and the reply
LATENCY_MIN_TIMEOUT_S = 20.0


def latency_timeout_s(deadline: float | None) -> float:
    """The latency child's time limit: the default, or what is left before `deadline` (time.monotonic()) less
    `LATENCY_RESERVE_S`, at least `LATENCY_MIN_TIMEOUT_S`. Its timed phase ends at 80% of it (`tools.latency`),
    so a version of seconds a call near the end of a job's budget reports fewer runs, not none."""
    if deadline is None:
        return DEFAULT_TIMEOUT_S
    left = deadline - time.monotonic() - LATENCY_RESERVE_S
    return min(DEFAULT_TIMEOUT_S, max(LATENCY_MIN_TIMEOUT_S, left))


def evaluate_version(
    store: VersionStore,
    manifest: VersionManifest,
    plan: AccuracyPlan,
    *,
    data_dir: Path,
    reference: LoadedModel | None = None,
    data: CalibrationData | None = None,
    targets: Sequence[str] = (),
    machine: MachineProfile | None = None,
    threads: int = 1,
    iterations: int = 50,
    progress: Callable[[float, str], None] | None = None,
    reference_cache: Path | None = None,
    reference_is_self: bool = False,
    known_flops: int | None = None,
    deadline: float | None = None,
    must_beat: BestToBeat | None = None,
) -> Measurement:
    """Measure a stored version: batch-1 latency and memory here (child process), size, FLOPs and the latency
    projected to each named target (estimated; this machine's figure is measured), then accuracy.

    The figures of seconds come first: with `must_beat` (the best version that meets every criterion, in the
    improvement phase) a version they show cannot beat it on the goal's priority is not run for accuracy (a
    closed-loop simulation or a slow model's fidelity can take minutes); its Measurement has no accuracy and
    `accuracy_skipped` says why.

    `reference_cache` keeps the original's fidelity outputs between versions; `reference_is_self` says the
    version is the original (the baseline), judged against itself without running it twice. `known_flops`
    is a count already made of this very model (the analysis profile), not counted again. `deadline`
    (time.monotonic()) bounds the latency child (`latency_timeout_s`): past it the FLOPs are not counted.

    `progress(percent, message)` hears of each stage: 25 loaded, 50 latency, 75 size and FLOPs, 100 done."""
    report = progress or (lambda percent, message: None)
    model = load_manifest(store, manifest, data_dir)
    report(25, f"version {manifest.id} loaded; measuring latency")
    path = store.artifact_path(manifest.job_id, manifest.id)
    runtime_name: RuntimeName = "onnxruntime-cpu" if model.session is not None else "torch-cpu"
    runtime = measure_runtime(
        path,
        LoadOptions.model_validate(manifest.load_options),
        runtime_name,
        threads=threads,
        iterations=iterations,
        data_dir=data_dir,
        timeout_s=latency_timeout_s(deadline),
    )
    report(50, f"p50 {runtime.p50_ms:.3f} ms; measuring size and FLOPs")
    size = size_of_loaded(model)
    if known_flops is not None:
        flops: int | None = known_flops
    elif deadline is not None and deadline - time.monotonic() < LATENCY_RESERVE_S:
        flops = None  # optional, and the step's time is spent
        _log.info("FLOPs not counted: the step's time is spent", extra={"version_id": manifest.id})
    else:
        flops = _flops(model)
    projections = []
    for name in dict.fromkeys(canonical_target_name(target) for target in targets):
        if name == THIS_MACHINE:
            continue
        if machine is None:
            raise ValidationError("projecting latency to other targets needs the measured machine profile")
        projections.append(project_latency(runtime, size, flops, resolve_target(name, machine), machine))
    measured = Measurement(
        version_id=manifest.id,
        technique=manifest.technique,
        params=manifest.params,
        runtime=runtime,
        size=size,
        flops=flops,
        projections=projections,
    )
    skipped = must_beat.rules_out(measured) if must_beat is not None and not reference_is_self else None
    if skipped is not None:
        report(100, f"version {manifest.id} measured: {skipped}")
        _log.info(
            "evaluated version without accuracy",
            extra={"job_id": manifest.job_id, "version_id": manifest.id, "p50_ms": runtime.p50_ms},
        )
        return measured.model_copy(update={"accuracy_skipped": skipped})
    report(75, f"size and FLOPs measured; measuring {plan.level} accuracy")
    if reference_is_self:
        reference = model
    accuracy = measure_accuracy(plan, model, reference=reference, data=data, reference_cache=reference_cache)
    report(100, f"version {manifest.id} measured: {accuracy.label} {accuracy.value:.4g}")
    _log.info(
        "evaluated version",
        extra={"job_id": manifest.job_id, "version_id": manifest.id, "p50_ms": runtime.p50_ms},
    )
    return with_accuracy(measured, accuracy)


def with_accuracy(measurement: Measurement, accuracy: AccuracyResult) -> Measurement:
    """`measurement` with `accuracy` as its headline and the figures that ride along it (a policy's output
    cosine, closed-loop agreement's success rate) as its other figures."""
    return measurement.model_copy(
        update={
            "accuracy": accuracy,
            "other_accuracy": [
                *companion_figures(accuracy),
                *(figure for figure in (cosine_figure(accuracy),) if figure is not None),
            ],
        }
    )


def _agreement(plan: AccuracyPlan, model: LoadedModel, reference: LoadedModel | None) -> AccuracyResult:
    """Closed-loop action agreement of `model` with the original on the plan's seeded episodes."""
    from tools.evaluation.agreement import evaluate_closed_loop_agreement

    if reference is None:
        raise ValidationError("closed-loop agreement needs the original model as the reference")
    return evaluate_closed_loop_agreement(reference, model, plan.simulator or "", plan.episodes, plan.seed)


def companion_figures(accuracy: AccuracyResult) -> list[AccuracyResult]:
    """Figures measured along with the headline: closed-loop agreement also yields the success rate."""
    if accuracy.level != "closed_loop_agreement":
        return []
    from tools.evaluation.agreement import success_figure

    return [success_figure(accuracy)]


def _flops(model: LoadedModel) -> int | None:
    """FLOPs of one batch-1 forward pass from the profiler, or None when it cannot count them."""
    from tools.profiling import profile_model

    try:
        return profile_model(model).flops
    except (
        Exception
    ):  # noqa: BLE001 - FLOPs are optional; some quantized tensor subclasses defeat the counter
        _log.info("FLOPs not counted", extra={"model_path": str(model.path)})
        return None
