"""Live progress of a job on the terminal: a bar per long step, a line per attempt, the end table.

On a terminal the bar redraws in place; otherwise (a log, CI) each step prints at 0/25/50/75/100%.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from graph.events import Event
from tools.evaluation.report import Report, reported_figures

BAR_WIDTH = 24


class ConsoleProgress:
    """A job-event subscriber that draws progress on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._open_bar = False
        self._last_quarter: dict[str, int] = {}

    def _line(self, text: str) -> None:
        """Print a full line, ending any bar drawn in place."""
        if self._open_bar:
            self.stream.write("\n")
            self._open_bar = False
        self.stream.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        """Render one event."""
        data = event.data
        if event.type == "progress":
            self._progress(
                str(data.get("step", "")), float(data.get("percent", 0)), str(data.get("message", ""))
            )
        elif event.type == "attempt":
            self._line(attempt_line(data))
        elif event.type == "status":
            text = status_line(data)
            if text:
                self._line(text)
        elif event.type == "error":
            self._line(f"error: [{data.get('code')}] {data.get('message')}")
        elif event.type == "complete":
            verdict = (
                "goal met" if data.get("goal_met") else str(data.get("status", "done")).replace("_", " ")
            )
            self._line(f"done: {verdict}; final version {data.get('final_version', '-')}")

    def _progress(self, step: str, percent: float, message: str) -> None:
        """Draw the step's bar in place (terminal) or print it at each new quarter (log)."""
        if self.tty:
            filled = int(BAR_WIDTH * min(percent, 100) / 100)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r  {step:9s} [{bar}] {percent:5.1f}% {message[:60]:60s}")
            self.stream.flush()
            self._open_bar = percent < 100
            if percent >= 100:
                self.stream.write("\n")
            return
        quarter = int(min(percent, 100) // 25)
        if self._last_quarter.get(step) == quarter and percent < 100:
            return
        self._last_quarter[step] = -1 if percent >= 100 else quarter
        self._line(f"  {step}: {percent:5.1f}% {message}")


def status_line(data: dict[str, Any]) -> str | None:
    """One line for the status events a user wants to see, None for the rest."""
    state = data.get("state")
    if state == "node":
        return f"{data.get('node')}: {data.get('message', '')}".rstrip(": ")
    if state == "planned":
        if data.get("action") == "finish":
            return f"plan: finish ({data.get('rationale')})"
        names = " -> ".join(str(step.get("type")) for step in data.get("steps", []))
        return f"plan: {names} ({data.get('rationale')})"
    if state == "rolled_back":
        if data.get("from_version") is None:
            return f"rollback: attempt {data.get('attempt')} failed; staying at {data.get('to_version')}"
        return f"rollback: {data.get('from_version')} rejected, back to {data.get('to_version')}"
    if state == "analyzed":
        return f"analysis: {data.get('summary')}"
    if state == "decided" and data.get("source") == "rules_fallback":
        return f"{data.get('agent')}: LLM failed ({data.get('fallback_reason')}); rules decided"
    if state in ("needs_input", "resumed", "forked", "budget_spent"):
        detail = data.get("question") or data.get("message") or data.get("parent_job") or data.get("next")
        return f"{state.replace('_', ' ')}: {detail}"
    return None


def attempt_line(data: dict[str, Any]) -> str:
    """One line per attempt: index, technique, status, headline figures, reason."""
    figures = []
    if data.get("p50_ms") is not None:
        figures.append(f"p50 {data['p50_ms']:.3f} ms")
    if data.get("size_mb") is not None:
        figures.append(f"{data['size_mb']:.2f} MB")
    accuracy = data.get("accuracy")
    if isinstance(accuracy, dict):
        figures.append(f"{accuracy.get('metric')} {accuracy.get('value'):.4g}")
    shown = f" [{', '.join(figures)}]" if figures else ""
    return f"attempt {data.get('index')}: {data.get('technique')} {str(data.get('status')).upper()}{shown} - {data.get('reason')}"


def before_after_table(report: Report) -> str:
    """The end-of-run table: size, latency, accuracy and per-target latency before and after."""
    comparison = report.comparison

    def cell(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        (
            "size (MB)",
            cell(comparison.size_mb_before, 2),
            cell(comparison.size_mb_after, 2),
            f"{comparison.compression:.2f}x smaller" if comparison.compression else "",
        ),
        (
            "p50 here (ms)",
            cell(comparison.latency_ms_before),
            cell(comparison.latency_ms_after),
            f"{comparison.speedup:.2f}x faster" if comparison.speedup else "",
        ),
    ]
    if comparison.accuracy is not None:
        change = comparison.accuracy
        rows.append(
            (change.label, cell(change.before, 4), cell(change.after, 4), f"change {change.change:+.4f}")
        )
    for label, before, after in reported_figures(report):
        rows.append(
            (f"{label} (not judged)", cell(before, 4), cell(after, 4), f"change {after - before:+.4f}")
        )
    for target in report.targets:
        if target.projected is not None and not target.measured:
            rows.append((f"p50 {target.target} (estimated)", "", cell(target.projected.latency_ms), ""))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'':{width}s}  {'before':>10s}  {'after':>10s}  change", "-" * (width + 40)]
    lines += [
        f"{name:{width}s}  {before:>10s}  {after:>10s}  {change}" for name, before, after, change in rows
    ]
    verdict = "GOAL MET" if report.goal_met else "BEST EFFORT: goal not met"
    lines.append(f"\n{verdict}")
    for missing in report.missing:
        lines.append(
            f"  missing {missing.name}: {missing.note or ''} value {missing.value} limit {missing.limit}"
        )
    return "\n".join(lines)
