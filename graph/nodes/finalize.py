"""finalize: choose the best version (goal met, else the best effort), build and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from graph.context import GraphContext, report_targets, run_work, step_time_s
from graph.events import Writer, emit
from graph.search import accepted_points
from graph.state import JobState, ReportRef, VersionPoint
from graph.work import AcceptanceFigures, judges_on_data, version_key
from tools.errors import RoboptError
from tools.evaluation.criteria import Criteria, CriteriaCheck, check_criteria
from tools.evaluation.evaluate import with_accuracy
from tools.evaluation.machine import machine_profile
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import (
    AcceptanceCheck,
    AttemptRecord,
    SearchStop,
    build_report,
    write_report,
)
from tools.evaluation.types import AccuracyResult


def _latency(measurement: Measurement, target: str) -> float:
    found = measurement.latency_on(target)
    return found[0] if found else float("inf")


def _size(measurement: Measurement) -> float:
    return float(measurement.size.artifact_bytes or 0) if measurement.size else float("inf")


def _shortfall(check: CriteriaCheck) -> float:
    """How far the missed criteria are from their limits: the sum of margin / limit over the criteria NOT met,
    each capped at -1 (an unmeasured one counts -1). Margins of criteria already met add nothing, so a version
    with room to spare on accuracy (the untouched original) cannot outscore one that came closer to the goal.
    """
    total = 0.0
    for result in check.missing:
        if result.margin is None or not result.limit:
            total -= 1.0
        else:
            total += max(-1.0, min(0.0, result.margin / abs(result.limit)))
    return total


def choose_final(
    criteria: Criteria, objective: str, baseline: Measurement, points: list[VersionPoint]
) -> tuple[VersionPoint, CriteriaCheck]:
    """The best version: among those meeting every criterion, the fastest (or smallest) on the target; when
    none does, the one missing fewest criteria, then the one coming closest to those it misses, then the
    fastest (or smallest)."""
    checked = [(point, check_criteria(criteria, baseline, point.measurement)) for point in points]
    target = criteria.latency_target

    def objective_key(item: tuple[VersionPoint, CriteriaCheck]) -> tuple[float, float]:
        latency, size = _latency(item[0].measurement, target), _size(item[0].measurement)
        return (size, latency) if objective == "smallest" else (latency, size)

    passing = [(p, c) for p, c in checked if c.passed]
    if passing:
        return min(passing, key=objective_key)
    return min(checked, key=lambda item: (len(item[1].missing), -_shortfall(item[1]), objective_key(item)))


def _figure(result: AccuracyResult | None) -> str:
    """A figure for a note: its label and value."""
    return "not measured" if result is None else f"{result.label} {result.value:.4g}"


def _accuracy_passed(criteria: Criteria, baseline: Measurement, final: Measurement) -> bool:
    """Whether `final` meets the accuracy criteria (floor and tolerated drop) against `baseline`."""
    check = check_criteria(criteria, baseline, final)
    return all(result.passed for result in check.results if "accuracy" in result.name)


async def acceptance_check(
    state: JobState,
    context: GraphContext,
    writer: Writer | None,
    criteria: Criteria,
    baseline: Measurement,
    final: VersionPoint,
) -> tuple[Measurement, Measurement, AcceptanceCheck | None, list[str]]:
    """Measure the original and the final version on the acceptance part, in a child within what is left of
    the job's time, and return (baseline, final, check, notes) carrying those figures: the search selected the
    final version on its own part, so its figure there is biased toward it. When the job judges on no data of
    its own, or the measurement fails or runs out of time, the search figures stay and a note says so."""
    options = state["options"]
    if not judges_on_data(options.accuracy, options.data):
        return baseline, final.measurement, None, []
    emit(writer, "status", state="node", node="finalize", message="measuring on the acceptance part")
    original = state["original"]
    try:
        figures: AcceptanceFigures = await run_work(
            context,
            writer,
            state,
            "finalize",
            "measure_acceptance",
            {
                "refs": [original, final.ref],
                "original": original,
                "plan": options.accuracy,
                "data": options.data,
            },
            time_s=step_time_s(state),
        )
    except RoboptError as error:
        note = (
            f"acceptance: not measured ({error.one_line()}); the figures reported are the search part's, on "
            "which the final version was selected"
        )
        return baseline, final.measurement, None, [note]
    before = figures.accuracy.get(version_key(original))
    after = figures.accuracy.get(version_key(final.ref))
    if before is None or after is None:
        return baseline, final.measurement, None, ["acceptance: not measured; the search figures stay"]
    checked_baseline, checked_final = with_accuracy(baseline, before), with_accuracy(final.measurement, after)
    check = AcceptanceCheck(
        independent=figures.independent,
        batches=figures.batches,
        samples=figures.samples,
        search_batches=figures.search_batches,
        baseline_search=baseline.accuracy,
        final_search=final.measurement.accuracy,
    )
    notes = [figures.note] if figures.note else []
    notes.append(
        f"acceptance: final version {final.ref.version_id} {_figure(after)} on {figures.samples} held-out inputs "
        f"(the figure that counts), {_figure(final.measurement.accuracy)} on the search part; baseline "
        f"{_figure(before)} there, {_figure(baseline.accuracy)} on the search part"
    )
    if _accuracy_passed(criteria, baseline, final.measurement) and not _accuracy_passed(
        criteria, checked_baseline, checked_final
    ):
        notes.append(
            f"acceptance: version {final.ref.version_id} met the accuracy criterion on the search part "
            f"({_figure(final.measurement.accuracy)}) but not on the acceptance part ({_figure(after)}, baseline "
            f"{_figure(before)}): the job ends best effort"
        )
    return checked_baseline, checked_final, check, notes


async def finalize(state: JobState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Pick the final version, check it on the acceptance part, write report.json / report.md / plots under
    <data>/reports/<job>/."""
    writer = runtime.stream_writer
    goal, baseline = state["goal"], state["baseline"]
    if goal is None or baseline is None:
        raise RuntimeError("finalize reached without a goal and a baseline")
    emit(writer, "status", state="node", node="finalize", message="choosing the final version")
    attempts = state.get("attempts", [])
    points = accepted_points(state)
    # a size priority ('under 5 MB' with no speed asked) keeps the smallest passing version, as the search did
    objective = "smallest" if goal.priority == "size" else goal.objective
    final, _ = choose_final(goal.criteria, objective, baseline, points)
    records = [
        AttemptRecord(
            index=0, technique="original", status="baseline", reason="as given", measurement=baseline
        )
    ]
    for attempt in attempts:
        params = attempt.steps[0] if len(attempt.steps) == 1 else {"steps": attempt.steps}
        records.append(
            AttemptRecord(
                index=attempt.index,
                technique=attempt.technique,
                params=params,
                status=attempt.status,
                reason=attempt.reason,
                measurement=attempt.measurement,
            )
        )
    notes = list(state.get("notes", []))
    plan = state.get("plan")
    stop = None
    if plan is not None and plan.action == "finish":
        notes.append(f"stopped: {plan.rationale}")
        stop = plan.stop or SearchStop(
            rule="planner_finished", rationale=plan.rationale, priority=goal.priority
        )
    checked_baseline, checked_final, acceptance, acceptance_notes = await acceptance_check(
        state, runtime.context, writer, goal.criteria, baseline, final
    )
    machine = machine_profile(runtime.context.data_dir)
    report = build_report(
        state["goal_text"],
        goal.criteria,
        checked_baseline,
        checked_final,
        records,
        report_targets(state),
        machine=machine,
        notes=notes
        + acceptance_notes
        + [f"final version {final.ref.version_id}: {' -> '.join(final.lineage) or 'the original'}"],
        search_stop=stop,
        acceptance=acceptance,
    )
    out = Path(runtime.context.data_dir) / "reports" / state["job_id"]
    files = write_report(report, out)
    status = "goal_met" if report.goal_met else "best_effort"
    ref = ReportRef(
        directory=str(out),
        json_path=str(files.json_path),
        markdown_path=str(files.markdown_path),
        final_version=final.ref.version_id,
        final_ref=final.ref,
        goal_met=report.goal_met,
        missing=[f"{m.name}: {m.note or ''} value {m.value} limit {m.limit}" for m in report.missing],
    )
    emit(
        writer,
        "complete",
        status=status,
        goal_met=report.goal_met,
        final_version=final.ref.version_id,
        report=str(files.json_path),
        missing=ref.missing,
        attempts=len(attempts),
    )
    return {"report": ref, "status": status, "last_node": "finalize", "current": final}
