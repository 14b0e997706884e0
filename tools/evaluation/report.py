"""The before/after report: one typed `Report` (docs/report-schema.md), written as JSON, Markdown and PNGs.

`build_report(...)` assembles the goal, baseline, final version, comparison, criteria check, attempts, Pareto
front, per-target projections (estimated except on this machine) and feasibility, and the environment.
`write_report(report, out_dir)` writes report.json (validates back into `Report`), report.md (tables; every
estimate says "estimated"; fidelity is never called accuracy) and pareto.png / attempts.png.
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import RoboptError
from tools.evaluation.acceptance_report import AcceptanceCheck, acceptance_section
from tools.evaluation.agreement_report import agreement_section
from tools.evaluation.comparison import Comparison, ParetoResult, compare, pareto_front
from tools.evaluation.criteria import Criteria, CriteriaCheck, CriterionResult, check_criteria
from tools.evaluation.machine import MachineProfile
from tools.evaluation.measurement import Measurement
from tools.evaluation.priority import SearchPriority
from tools.evaluation.targets import (
    THIS_MACHINE,
    Feasibility,
    ProjectedLatency,
    TargetProfile,
    preflight,
    project_latency,
    resolve_target,
)
from tools.evaluation.types import RELATIVE_ERROR_METRICS
from tools.log import get_logger

log = get_logger("evaluation")

REPORT_SCHEMA_VERSION = 1
AttemptStatus = Literal["baseline", "accepted", "rejected", "failed"]


class AttemptRecord(BaseModel):
    """One optimization attempt as the report shows it: what ran, what became of it, and its figures."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    technique: str
    params: dict[str, Any] = Field(default_factory=dict)
    status: AttemptStatus
    reason: str = Field(default="", description="Why it was accepted, rejected or failed.")
    measurement: Measurement | None = Field(default=None, description="None when the attempt failed.")


SearchStopRule = Literal[
    "goal_met_stop_at_first",
    "gain_below_noise",
    "attempts_spent",
    "time_spent",
    "nothing_untried",
    "accuracy_missed",
    "planner_finished",
]


class UntriedChain(BaseModel):
    """A chain the search could still have tried when it stopped, with what it was predicted to gain."""

    model_config = ConfigDict(frozen=True)

    chain: str = Field(description="The techniques joined with '+', e.g. 'ort_int8_static'.")
    start_from: str = Field(description="The version the chain would have started from.")
    predicted_speedup: float | None = Field(
        default=None,
        description="Predicted p50 of the best passing version / p50 after the chain (>1 faster).",
    )
    predicted_compression: float | None = Field(
        default=None, description="Predicted bytes of the best passing version / bytes after the chain."
    )
    predicted_gain: float = Field(
        description="Predicted relative gain on the search's priority over the best passing version (0.1 = 10%)."
    )


class SearchStop(BaseModel):
    """Which rule ended the search, why, and what was left untried."""

    model_config = ConfigDict(frozen=True)

    rule: SearchStopRule
    rationale: str
    priority: SearchPriority | None = Field(
        default=None,
        description="What 'better' meant once the goal was met: latency, size, or Pareto dominance of both.",
    )
    untried: list[UntriedChain] = Field(
        default_factory=list, description="Chains left untried, highest predicted gain first."
    )


class TargetReport(BaseModel):
    """The final version on one target: latency (measured here, estimated elsewhere) and feasibility."""

    model_config = ConfigDict(frozen=True)

    target: str
    display_name: str
    measured: bool = Field(description="True only for this machine.")
    projected: ProjectedLatency | None = Field(description="None when latency or size was not measured.")
    feasibility: Feasibility | None
    note: str = ""


class Environment(BaseModel):
    """Where the measurements were taken."""

    model_config = ConfigDict(frozen=True)

    machine: MachineProfile | None = None
    python: str
    platform: str
    packages: dict[str, str] = Field(default_factory=dict, description="torch, onnxruntime, ... versions.")


class Report(BaseModel):
    """The optimization's outcome: goal, before/after, criteria, attempts, Pareto front, targets."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = REPORT_SCHEMA_VERSION
    goal: str = Field(description="The user's goal, as written.")
    criteria: Criteria
    baseline: Measurement = Field(
        description="The original; its accuracy is the acceptance part's when `acceptance` is set."
    )
    final: Measurement = Field(
        description="The chosen version (the baseline when nothing was accepted); its accuracy is the "
        "acceptance part's when `acceptance` is set, and the criteria are checked on that figure."
    )
    comparison: Comparison
    criteria_check: CriteriaCheck
    goal_met: bool
    missing: list[CriterionResult] = Field(description="Criteria not met, with their signed margins.")
    attempts: list[AttemptRecord]
    pareto: ParetoResult
    targets: list[TargetReport]
    environment: Environment
    search_stop: SearchStop | None = Field(
        default=None, description="Which rule stopped the search and what was left untried."
    )
    acceptance: AcceptanceCheck | None = Field(
        default=None,
        description="The final check on the acceptance part, with the search part's figures beside it; None "
        "when the job had no data of its own to hold back (synthetic inputs, closed loop) or the check failed.",
    )
    notes: list[str] = Field(default_factory=list)
    created: datetime


class ReportFiles(BaseModel):
    """Paths of the written report files."""

    json_path: Path
    markdown_path: Path
    images: list[Path]


def report_json_schema() -> dict[str, Any]:
    """Return the JSON schema of `Report` (docs/report.schema.json is this, written out)."""
    return Report.model_json_schema()


def _environment(machine: MachineProfile | None) -> Environment:
    """Record python, platform and the measuring libraries' versions."""
    from importlib import metadata

    packages = {}
    for name in ("torch", "onnxruntime", "onnx", "numpy", "transformers"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return Environment(
        machine=machine, python=sys.version.split()[0], platform=platform.platform(), packages=packages
    )


def _target_report(final: Measurement, target: TargetProfile, machine: MachineProfile | None) -> TargetReport:
    """Project the final version onto `target` and pre-flight it there."""
    projected = next((p for p in final.projections if p.target == target.name), None)
    note = ""
    if final.runtime is not None and final.size is not None:
        if target.measured or machine is not None:
            projected = project_latency(final.runtime, final.size, final.flops, target, machine)
        elif projected is None:
            note = "no projection: this machine's profile was not given"
    elif projected is None:
        note = "no projection: latency or size of the final version was not measured"
    feasibility = None
    if final.size is not None:
        feasibility = preflight(
            target,
            final.size.dominant_precision(),
            size=final.size,
            runtime=final.runtime.runtime if final.runtime else None,
        )
    return TargetReport(
        target=target.name,
        display_name=target.display_name,
        measured=target.measured,
        projected=projected,
        feasibility=feasibility,
        note=note,
    )


def build_report(
    goal: str,
    criteria: Criteria,
    baseline: Measurement,
    final: Measurement,
    attempts: Sequence[AttemptRecord] = (),
    targets: Sequence[str | TargetProfile] = (),
    *,
    machine: MachineProfile | None = None,
    notes: Sequence[str] = (),
    search_stop: SearchStop | None = None,
    acceptance: AcceptanceCheck | None = None,
) -> Report:
    """Assemble the report; the criteria's latency target is always among the targets reported. With
    `acceptance`, `baseline` and `final` carry the acceptance part's accuracy, which the criteria judge."""
    wanted: list[TargetProfile] = []
    names = list(targets)
    if criteria.latency_target not in [t if isinstance(t, str) else t.name for t in names]:
        names.append(criteria.latency_target)
    for item in names:
        try:
            profile = item if isinstance(item, TargetProfile) else resolve_target(item, machine)
        except RoboptError as exc:
            if item == criteria.latency_target:
                raise
            notes = [*notes, f"target {item!r} skipped: {exc.message}"]
            continue
        if profile.name not in {t.name for t in wanted}:
            wanted.append(profile)
    target_reports = [_target_report(final, t, machine) for t in wanted]
    projections = {p.target: p for p in final.projections}
    projections.update({r.target: r.projected for r in target_reports if r.projected is not None})
    final = final.model_copy(update={"projections": list(projections.values())})
    check = check_criteria(criteria, baseline, final)
    measured = [baseline, final] + [a.measurement for a in attempts if a.measurement is not None]
    unique = list({m.version_id: m for m in measured}.values())
    report = Report(
        goal=goal,
        criteria=criteria,
        baseline=baseline,
        final=final,
        comparison=compare(baseline, final, level=criteria.accuracy_level, metric=criteria.accuracy_metric),
        criteria_check=check,
        goal_met=check.passed,
        missing=check.missing,
        attempts=list(attempts),
        pareto=pareto_front(unique, level=criteria.accuracy_level, metric=criteria.accuracy_metric),
        targets=target_reports,
        environment=_environment(machine),
        search_stop=search_stop,
        acceptance=acceptance,
        notes=list(notes),
        created=datetime.now(timezone.utc),
    )
    log.info("report built", extra={"goal_met": report.goal_met, "attempts": len(report.attempts)})
    return report


def write_report(report: Report, out_dir: Path) -> ReportFiles:
    """Write report.json, report.md, pareto.png and attempts.png into `out_dir` and return their paths."""
    from tools.evaluation.report_plots import plot_attempts, plot_pareto

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(report.model_dump_json(indent=2))
    images = [plot_pareto(report, out / "pareto.png"), plot_attempts(report, out / "attempts.png")]
    markdown_path = out / "report.md"
    markdown_path.write_text(render_markdown(report, [p.name for p in images if p is not None]))
    return ReportFiles(json_path=json_path, markdown_path=markdown_path, images=[p for p in images if p])


# --- Markdown --------------------------------------------------------------------------------------------


def _fmt(value: float | int | None, digits: int = 4, suffix: str = "") -> str:
    """Format a number for a table cell; '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Render a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]


def reported_figures(report: Report) -> list[tuple[str, float, float]]:
    """Accuracy figures measured beside the judged one (a policy's output cosine beside its action error), as
    (label, baseline value, final value)."""
    judged = report.comparison.accuracy
    figures = []
    for after in [*([report.final.accuracy] if report.final.accuracy else []), *report.final.other_accuracy]:
        if judged is not None and after.label == judged.label:
            continue
        before = report.baseline.accuracy_for(after.level, after.metric)
        if before is not None:
            figures.append((after.label, before.value, after.value))
    return figures


def judged_by(report: Report) -> str:
    """One line naming the accuracy level and metric the goal was judged by."""
    a = report.comparison.accuracy
    if a is None:
        return "**Accuracy judged by:** nothing measured."
    direction = "higher is better" if a.higher_is_better else "lower is better"
    line = f"**Accuracy judged by:** {a.label} ({direction})"
    if a.metric in RELATIVE_ERROR_METRICS:
        line += (
            ": a policy without labels is judged on how far its actions move from the original's, over whole "
            "action chunks; output cosine is reported beside it, not judged"
        )
    return line + "."


def _before_after(report: Report) -> list[str]:
    """The before/after table."""
    c = report.comparison
    rows = []
    if c.accuracy is not None:
        a = c.accuracy
        rel = f" ({a.relative_pct:+.2f}%)" if a.relative_pct is not None else ""
        direction = "higher is better" if a.higher_is_better else "lower is better"
        rows.append([f"{a.label} ({direction})", _fmt(a.before), _fmt(a.after), f"{a.change:+.4g}{rel}"])
    else:
        rows.append(["accuracy", "not measured", "not measured", "-"])
    for label, before, after in reported_figures(report):
        rows.append([f"{label} (reported, not judged)", _fmt(before), _fmt(after), f"{after - before:+.4g}"])
    rows += [
        ["size (MB)", _fmt(c.size_mb_before), _fmt(c.size_mb_after), f"{_fmt(c.compression, 3)}x smaller"],
        ["parameters", _fmt(c.params_before), _fmt(c.params_after), "-"],
        [
            "latency p50 here (ms, measured)",
            _fmt(c.latency_ms_before),
            _fmt(c.latency_ms_after),
            f"{_fmt(c.speedup, 3)}x faster",
        ],
        ["time per sample (ms, measured)", _fmt(c.per_sample_ms_before), _fmt(c.per_sample_ms_after), "-"],
        ["peak memory (MB, measured)", _fmt(c.peak_memory_mb_before), _fmt(c.peak_memory_mb_after), "-"],
    ]
    return _table(
        ["figure", f"baseline ({c.baseline_version})", f"final ({c.candidate_version})", "change"], rows
    )


def _criteria_rows(results: Sequence[CriterionResult]) -> list[str]:
    """The criteria table; projected values say 'estimated'."""
    rows = [
        [
            r.name,
            _fmt(r.value) + (" (estimated)" if r.estimated else ""),
            _fmt(r.limit),
            _fmt(r.margin),
            r.unit,
            "yes" if r.passed else "**no**",
            r.note,
        ]
        for r in results
    ]
    return _table(["criterion", "value", "limit", "margin (+ = room)", "unit", "met", "note"], rows)


def _target_rows(report: Report) -> list[str]:
    """The per-target table: latency measured here, estimated elsewhere, and feasibility."""
    rows = []
    for t in report.targets:
        p, f = t.projected, t.feasibility
        latency = p.label if p is not None else "- " + t.note
        bound = p.floor_target.bound + "-bound" if p is not None and p.floor_target is not None else "-"
        fits = "-" if f is None else ("yes" if f.fits else "**no**: " + "; ".join(f.reasons))
        memory = "-" if f is None else f"{f.required_gb:.2f} / {f.usable_gb:.2f} GB"
        rows.append([t.display_name, latency, bound, memory, fits])
    return _table(["target", "latency p50", "roofline", "memory needed / usable", "fits"], rows)


def _attempt_rows(report: Report) -> list[str]:
    """The attempts table."""
    rows = []
    for a in report.attempts:
        m = a.measurement
        acc = m.accuracy if m is not None else None
        rows.append(
            [
                str(a.index),
                m.version_id if m is not None else "-",
                a.technique,
                a.status,
                (
                    f"{acc.label} {_fmt(acc.value)}"
                    if acc is not None
                    else "not measured" if m is not None and m.accuracy_skipped else "-"
                ),
                _fmt(m.runtime.p50_ms if m is not None and m.runtime else None),
                _fmt(m.size.artifact_mb if m is not None and m.size else None),
                a.reason,
            ]
        )
    header = [
        "#",
        "version",
        "technique",
        "status",
        "quality (level and metric)",
        "p50 ms",
        "size MB",
        "reason",
    ]
    return _table(header, rows)


def _search_stop_lines(stop: SearchStop | None) -> list[str]:
    """The 'Search' section: the rule that stopped the search and the chains left untried."""
    if stop is None:
        return []
    priority = f" (better meant: {stop.priority})" if stop.priority else ""
    lines = ["## Search", "", f"Stopped by `{stop.rule}`{priority}: {stop.rationale}", ""]
    if stop.untried:
        header = ["untried chain", "from", "predicted speed-up", "predicted compression", "predicted gain"]
        rows = [
            [
                u.chain,
                u.start_from,
                _fmt(u.predicted_speedup, 3, "x"),
                _fmt(u.predicted_compression, 3, "x"),
                f"{u.predicted_gain:+.1%}",
            ]
            for u in stop.untried
        ]
        lines += [*_table(header, rows), ""]
    return lines


def render_markdown(report: Report, images: Sequence[str] = ()) -> str:
    """Render the report as Markdown for people: outcome, before/after, criteria, targets, attempts."""
    lines = [f"# robopt report — {report.created:%Y-%m-%d %H:%M} UTC", "", f"**Goal:** {report.goal}", ""]
    if report.goal_met:
        lines.append(f"**Goal met** by version `{report.final.version_id}` ({report.final.technique}).")
    else:
        lines.append(f"**Goal not met.** Best effort: version `{report.final.version_id}`. Missing:")
        for r in report.missing:
            est = " (estimated)" if r.estimated else ""
            value = "not measured" if r.value is None else f"{_fmt(r.value)}{est}"
            margin = "" if r.margin is None else f", short by {_fmt(-r.margin)} {r.unit}"
            lines.append(f"- {r.name}: {value} against a limit of {_fmt(r.limit)} {r.unit}{margin}")
    lines += ["", judged_by(report), "", "## Before / after", "", *_before_after(report), ""]
    lines += agreement_section(report.final.accuracy_for("closed_loop_agreement"))
    lines += acceptance_section(report.acceptance, report.baseline.accuracy, report.final.accuracy)
    if report.criteria_check.results:
        lines += ["## Criteria", "", *_criteria_rows(report.criteria_check.results), ""]
    if report.targets:
        lines += [
            "## Targets",
            "",
            "Latency on this machine is measured; on every other target it is **estimated** by a roofline "
            "projection calibrated on this machine, from datasheet figures.",
            "",
            *_target_rows(report),
            "",
        ]
    lines += ["## Attempts", "", *(_attempt_rows(report) if report.attempts else ["No attempts."]), ""]
    lines += _search_stop_lines(report.search_stop)
    front = ", ".join(f"`{v}`" for v in report.pareto.front) or "-"
    quality = report.comparison.accuracy.label if report.comparison.accuracy else "accuracy"
    objectives = [quality if o == "accuracy" else o for o in report.pareto.objectives]
    lines += ["## Pareto front", "", f"Objectives: {', '.join(objectives) or '-'}. Front: {front}."]
    lines += [f"- `{v}` left out: {why}" for v, why in report.pareto.skipped.items()]
    lines += [""] + [f"![{Path(name).stem}]({name})" for name in images] + [""]
    env = report.environment
    machine = env.machine
    lines += ["## Environment", "", f"- python {env.python} on {env.platform}"]
    lines += [f"- {name} {version}" for name, version in env.packages.items()]
    if machine is not None:
        lines.append(
            f"- {machine.cpu_model}, {machine.physical_cores} cores: {machine.bandwidth_gbs:.1f} GB/s copy "
            f"bandwidth, {machine.fp32_gflops_all:.1f} GFLOP/s fp32 ({machine.all_threads} threads), "
            f"{machine.fp32_gflops_1thread:.1f} GFLOP/s fp32 (1 thread) — measured"
        )
    if report.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report.notes]]
    return "\n".join(lines) + "\n"


__all__ = [
    "THIS_MACHINE",
    "AcceptanceCheck",
    "AttemptRecord",
    "Environment",
    "Report",
    "ReportFiles",
    "SearchPriority",
    "SearchStop",
    "UntriedChain",
    "TargetReport",
    "build_report",
    "render_markdown",
    "report_json_schema",
    "write_report",
]
