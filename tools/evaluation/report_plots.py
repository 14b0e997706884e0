"""The report's figures, drawn headless (matplotlib Agg): the Pareto scatter and per-attempt bars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tools.evaluation.measurement import Measurement

if TYPE_CHECKING:
    from tools.evaluation.report import Report

_STATUS_COLORS = {"baseline": "#4c72b0", "accepted": "#55a868", "rejected": "#c44e52", "failed": "#8c8c8c"}


def _pyplot():  # noqa: ANN202 - matplotlib's module type
    """Import pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _measurements(report: "Report") -> list[Measurement]:
    """Baseline, final and every measured attempt, once each."""
    items = [report.baseline, report.final] + [a.measurement for a in report.attempts if a.measurement]
    return list({m.version_id: m for m in items}.values())


def plot_pareto(report: "Report", path: Path) -> Path | None:
    """Draw latency (x) against accuracy (y; size when no accuracy), marker area by size, the front ringed."""
    plt = _pyplot()
    chosen = report.comparison.accuracy
    points = []
    for m in _measurements(report):
        if m.runtime is None:
            continue
        acc = m.accuracy_for(chosen.level, chosen.metric) if chosen else None
        size_mb = m.size.artifact_mb if m.size and m.size.artifact_mb is not None else None
        y = acc.value if acc is not None else size_mb
        if y is None:
            continue
        points.append((m.version_id, m.runtime.p50_ms, y, size_mb or 1.0))
    if not points:
        return None
    largest = max(p[3] for p in points) or 1.0
    front = set(report.pareto.front)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for vid, x, y, size_mb in points:
        on_front = vid in front
        ax.scatter(
            x,
            y,
            s=40 + 600 * size_mb / largest,
            color="#55a868" if on_front else "#9aa5b1",
            edgecolors="#1b5e20" if on_front else "none",
            linewidths=2,
            alpha=0.8,
            zorder=3,
        )
        ax.annotate(vid, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    line = sorted((x, y) for vid, x, y, _ in points if vid in front)
    if len(line) > 1:
        ax.plot(*zip(*line), color="#1b5e20", linewidth=1, linestyle="--", zorder=2)
    ax.set_xlabel("latency p50 here (ms, measured)")
    if chosen is not None:
        direction = "higher is better" if chosen.higher_is_better else "lower is better"
        ax.set_ylabel(f"{chosen.label} ({direction})")
    else:
        ax.set_ylabel("size (MB)")
    ax.set_title("Attempts: Pareto front ringed, marker area = size")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_attempts(report: "Report", path: Path) -> Path | None:
    """Draw one bar per attempt for size, latency and accuracy, coloured by status."""
    plt = _pyplot()
    rows = [("baseline", "baseline", report.baseline)]
    rows += [(f"#{a.index} {a.technique}", a.status, a.measurement) for a in report.attempts if a.measurement]
    chosen = report.comparison.accuracy
    panels = [
        ("size (MB)", lambda m: m.size.artifact_mb if m.size else None),
        ("latency p50 here (ms)", lambda m: m.runtime.p50_ms if m.runtime else None),
    ]
    if chosen is not None:
        panels.append(
            (
                chosen.label,
                lambda m: (r.value if (r := m.accuracy_for(chosen.level, chosen.metric)) else None),
            )
        )
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(6, 1.1 * len(rows) + 2), 2.6 * len(panels)), dpi=100
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    labels = [name for name, _, _ in rows]
    colors = [_STATUS_COLORS.get(status, "#999999") for _, status, _ in rows]
    for ax, (title, getter) in zip(axes, panels):
        values = [getter(m) for _, _, m in rows]
        ax.bar(range(len(rows)), [v if v is not None else 0 for v in values], color=colors)
        ax.set_ylabel(title, fontsize=8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title("Attempts (blue baseline, green accepted, red rejected)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
