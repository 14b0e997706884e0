"""Write the suite's outputs from its JSON document: results.json (raw), summary.md (tables) and one Pareto
PNG per scenario (robopt's versions and front, the baselines and the oracle's grid as points)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tools.log import get_logger

_log = get_logger("evals")


def _num(value: float | None, pattern: str = ".2f", suffix: str = "") -> str:
    """Format a number, "-" when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, pattern) + suffix


def _over_floor(value: float | None, suffix: str = "") -> str:
    """Format p50 / roofline floor; below 1 the floor was mismeasured (no model beats its roofline): say so."""
    text = _num(value, ".1f", suffix)
    return text + " **floor error**" if value is not None and math.isfinite(value) and value < 1 else text


def _acc(value: float | None) -> str:
    """Format an accuracy value."""
    return "-" if value is None else format(value, ".4g")


def _change(value: float | None) -> str:
    """Format a signed change."""
    return "-" if value is None else format(value, "+.3g")


def _metric(scenario: dict[str, Any]) -> str:
    """The scenario's accuracy label with its direction."""
    accuracy = scenario["accuracy"]
    if not accuracy["label"]:
        return "-"
    return f"{accuracy['label']} ({'higher' if accuracy['higher_is_better'] else 'lower'} is better)"


def _yes(value: bool) -> str:
    """yes / no."""
    return "yes" if value else "no"


def headline_table(document: dict[str, Any]) -> list[str]:
    """One line per scenario: met, robopt's ratios to FP32 eager, roofline, cost against the oracle, memory."""
    lines = [
        "| scenario | accuracy (metric) | goal met (eval) | robopt says | speedup | compression | Δ accuracy "
        "| p50 / roofline floor | attempts: robopt / oracle | wall s: robopt / oracle "
        "| optimizer peak MB / model MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in document["scenarios"]:
        robopt = s["robopt"]
        first = s["rows"][0]
        vs = first["vs_fp32_eager"]
        claim = robopt["status"] + ("" if robopt["claim_agrees"] else " **(disagrees)**")
        memory = s["memory"]
        lines.append(
            f"| {s['scenario']} | {_metric(s)} | {_yes(s['met'])} | {claim} "
            f"| {_num(vs['speedup'], '.2f', 'x')} | {_num(vs['compression'], '.2f', 'x')} "
            f"| {_change(vs['accuracy_change'])} | {_over_floor(first['latency_over_floor'], 'x')} "
            f"| {s['cost']['robopt_attempts']} / {s['cost']['oracle_candidates']} "
            f"| {_num(s['cost']['robopt_wall_s'], '.0f')} / {_num(s['cost']['oracle_wall_s'], '.0f')} "
            f"| {_num(memory['optimizer_peak_mb'], '.0f')} (+{_num(memory['optimizer_increase_mb'], '.0f')}) "
            f"/ {_num(memory['model_mb'], '.2f')} |"
        )
    return lines


BASELINE_SPEED_GOAL = 1.3
"""Issue 15's goal for robopt's speed over the best one-shot baseline that meets the same bound (at least 1.0)."""
ORACLE_SPEED_SHARE = 0.9
"""robopt's speed-up should reach this share of the oracle's best..."""
ORACLE_CANDIDATE_SHARE = 0.3
"""...using at most this share of the oracle's candidates..."""
ORACLE_WALL_SHARE = 0.25
"""...and at most this share of its wall time."""


def target_figures(s: dict[str, Any]) -> dict[str, Any]:
    """robopt against the best one-shot baseline that meets the scenario's bound (the fastest of those; robopt's
    speed and compression over it) and against the oracle (share of its best speed-up, of its candidates and of
    its wall time), each with whether issue 15's target holds; None where a figure is missing."""
    rows = {r["name"]: r for r in s["rows"]}
    robopt, oracle = rows.get("robopt"), rows.get("oracle_best")
    meeting = [
        r
        for r in s["rows"]
        if r["name"] not in ("robopt", "oracle_best") and r["status"] == "ok" and r["met"] and r["p50_ms"]
    ]
    best = min(meeting, key=lambda r: r["p50_ms"]) if meeting else None
    usable = robopt is not None and robopt["status"] == "ok" and bool(robopt["p50_ms"]) and s["met"]
    speed = best["p50_ms"] / robopt["p50_ms"] if usable and best else None
    size = best["size_mb"] / robopt["size_mb"] if usable and best and robopt["size_mb"] else None
    share = None
    if usable and oracle is not None and oracle["status"] == "ok" and oracle["met"] and oracle["p50_ms"]:
        share = oracle["p50_ms"] / robopt["p50_ms"]
    cost = s["cost"]
    candidates = cost["robopt_attempts"] / cost["oracle_candidates"] if cost["oracle_candidates"] else None
    wall = cost["robopt_wall_s"] / cost["oracle_wall_s"] if cost["oracle_wall_s"] else None
    return {
        "best_baseline": best["label"] if best else None,
        "speed_over_best_baseline": speed,
        "compression_over_best_baseline": size,
        "beats_best_baseline": None if speed is None or size is None else speed >= 1.0 and size >= 1.0,
        "oracle_speed_share": share,
        "oracle_candidate_share": candidates,
        "oracle_wall_share": wall,
        "oracle_targets_hold": (
            None
            if share is None or candidates is None or wall is None
            else share >= ORACLE_SPEED_SHARE
            and candidates <= ORACLE_CANDIDATE_SHARE
            and wall <= ORACLE_WALL_SHARE
        ),
    }


def targets_table(document: dict[str, Any]) -> list[str]:
    """One line per feasible scenario: robopt against the best one-shot baseline and against the oracle."""
    lines = [
        "| scenario | best baseline meeting the bound | robopt speed / size over it | holds (≥ 1.0x both) "
        "| share of oracle's best speed-up | of its candidates | of its wall time | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in document["scenarios"]:
        if not s["feasible"]:
            continue
        t = target_figures(s)

        def verdict(value: bool | None) -> str:
            return "-" if value is None else _yes(value)

        lines.append(
            f"| {s['scenario']} | {t['best_baseline'] or '-'} "
            f"| {_num(t['speed_over_best_baseline'], '.2f', 'x')} / "
            f"{_num(t['compression_over_best_baseline'], '.2f', 'x')} | {verdict(t['beats_best_baseline'])} "
            f"| {_num(t['oracle_speed_share'] and 100 * t['oracle_speed_share'], '.0f', '%')} "
            f"| {_num(t['oracle_candidate_share'] and 100 * t['oracle_candidate_share'], '.0f', '%')} "
            f"| {_num(t['oracle_wall_share'] and 100 * t['oracle_wall_share'], '.0f', '%')} "
            f"| {verdict(t['oracle_targets_hold'])} |"
        )
    return lines


def robopt_chain(robopt: dict[str, Any]) -> str:
    """The techniques behind robopt's final version: its accepted attempts up to the final one, in order."""
    final = robopt.get("final_attempt")
    if final is None:
        return "the original"
    steps = [a["technique"] for a in robopt["attempts"] if a["status"] == "accepted" and a["index"] <= final]
    return " → ".join(steps) or "the original"


def scenario_table(s: dict[str, Any]) -> list[str]:
    """Robopt, every baseline and the oracle's best: own figures, and robopt's ratios against each."""
    lines = [
        f"### {s['scenario']}",
        "",
        f"Goal: \"{s['goal']}\". Met means: {s['met_means']}.",
        "",
        "| result | met | p50 ms | size MB | accuracy | x roofline | robopt speedup over it "
        "| robopt compression over it | robopt Δ accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        vs = s["robopt_vs"].get(r["name"], {}) if r["name"] != "robopt" else {}
        status = "" if r["status"] == "ok" else f" ({r['status']})"
        label = (
            f"robopt: {robopt_chain(s['robopt'])}"
            if r["name"] == "robopt" and s["robopt"]["delivered"]
            else r["label"]
        )
        lines.append(
            f"| {label}{status} | {_yes(r['met'])} | {_num(r['p50_ms'], '.3f')} | {_num(r['size_mb'], '.3f')} "
            f"| {_acc(r['accuracy'])} | {_over_floor(r['latency_over_floor'])} "
            f"| {_num(vs.get('speedup'), '.2f', 'x')} | {_num(vs.get('compression'), '.2f', 'x')} "
            f"| {_change(vs.get('accuracy_change'))} |"
        )
    robopt = s["robopt"]
    notes = [f"robopt: {robopt['status']} after {robopt['attempts_count']} attempt(s)"]
    if robopt.get("question"):
        notes.append(f"question back: {robopt['question']}")
    if robopt.get("error"):
        notes.append(f"error: {robopt['error']}")
    notes += robopt.get("notes", [])
    if s["rows"][0]["missing"]:
        notes.append("robopt's result misses: " + "; ".join(s["rows"][0]["missing"]))
    lines += ["", *[f"- {note}" for note in notes], ""]
    return lines


def summary_markdown(document: dict[str, Any]) -> str:
    """The summary: machine and method, the headline table, then one table per scenario."""
    machine = document["machine"]
    m = document["measurement"]
    lines = [
        f"# robopt evals ({document['mode']} run, {document['created'][:10]})",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gb']} GB RAM, "
        f"{machine['platform']}; torch {machine['torch']}. Suite wall time {document['wall_s']:.0f} s.",
        "",
        f"Every figure below was measured by the eval itself, the same way for robopt's result, the baselines "
        f"and the oracle: p50 latency at batch 1 with {m['threads']} thread(s), {m['iterations']} timed runs in "
        f"a child process; accuracy on the same held-out data or simulator episodes. Ratios are against FP32 "
        f"PyTorch eager (above 1: faster, smaller). {document['noise_note']}",
        "",
        "## Headline",
        "",
        *headline_table(document),
        "",
        "- goal met (eval): the scenario's criteria checked on the eval's own measurement of robopt's final "
        "model; robopt says: the job's status (**disagrees** flags a claim the measurement does not back).",
        "- p50 / roofline floor: robopt's p50 over max(weight bytes / measured bandwidth, FLOPs / measured "
        "peak) on this machine at the model's storage precision, the peak measured with the kernels of the "
        "runtime that ran the model (ONNX Runtime MatMul / MatMulInteger, torch.mm / torch._int_mm); below "
        "1.0x the floor is wrong (a measurement error), never a model beating physics.",
        "- Δ accuracy: robopt's accuracy minus FP32 eager's, in the metric's units (mind its direction).",
        f"- optimizer peak memory: {document['memory_method']}; in brackets the increase over that sum just "
        "before the job started (the eval's own process and the fork server are in both).",
        "- attempts: robopt's attempts / the oracle's candidates (every single technique and every two-step "
        "combination of its grid); wall s: robopt's job / the oracle's apply + measure time.",
        "",
        "## Targets (issue 15)",
        "",
        *targets_table(document),
        "",
        f"- best baseline: the fastest one-shot baseline that meets the scenario's bound by the eval's measurement; "
        f"robopt's speed and compression over it should be at least 1.0x (goal {BASELINE_SPEED_GOAL}x). A "
        "scenario robopt does not meet, or with no baseline meeting it, shows '-'.",
        f"- oracle: robopt's speed-up as a share of the oracle's best meeting the bound (target at least "
        f"{ORACLE_SPEED_SHARE:.0%}), using at most {ORACLE_CANDIDATE_SHARE:.0%} of its candidates and "
        f"{ORACLE_WALL_SHARE:.0%} of its wall time.",
        "",
        "## Per scenario",
        "",
    ]
    for scenario in document["scenarios"]:
        lines += scenario_table(scenario)
    return "\n".join(lines) + "\n"


def _front(points: list[tuple[float, float, float]]) -> list[int]:
    """Indices of the non-dominated points (every coordinate lower is better)."""
    keep = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
            for j, q in enumerate(points)
            if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


def pareto_png(scenario: dict[str, Any], oracle_rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Plot accuracy against p50 and against size: the oracle grid, the baselines, robopt's versions and front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    higher = scenario["accuracy"]["higher_is_better"]
    if higher is None:
        return None
    mb = 1024 * 1024

    def xy(items: list[dict[str, Any]]) -> list[tuple[float, float, float, str]]:
        """Plottable (p50, size MB, accuracy, label) of rows that have all three figures."""
        out = []
        for r in items:
            size = r.get("size_mb") or ((r.get("size_bytes") or 0) / mb)
            if r.get("p50_ms") and size and r.get("accuracy") is not None:
                out.append((r["p50_ms"], size, r["accuracy"], r.get("label") or r.get("name", "")))
        return out

    grid = xy([r for r in oracle_rows if r["status"] == "ok"])
    baselines = xy([r for r in scenario["rows"] if r["name"] not in ("robopt", "oracle_best")])
    oracle_best = xy([r for r in scenario["rows"] if r["name"] == "oracle_best"])
    versions = xy(scenario.get("robopt_versions", []))
    final = xy(scenario["rows"][:1])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for axis, index, xlabel in (
        (axes[0], 0, "p50 latency, ms (log)"),
        (axes[1], 1, "artifact size, MB (log)"),
    ):
        axis.scatter([p[index] for p in grid], [p[2] for p in grid], s=14, c="0.75", label="oracle grid")
        for p in baselines:
            axis.scatter(p[index], p[2], s=50, marker="s", label=p[3])
        for p in oracle_best:
            axis.scatter(p[index], p[2], s=160, marker="*", c="goldenrod", label=p[3])
        if versions:
            sign = -1 if higher else 1
            front = sorted((versions[i] for i in _front([(sign * v[2], v[0], v[1]) for v in versions])))
            front.sort(key=lambda v: v[index])
            axis.scatter(
                [v[index] for v in versions], [v[2] for v in versions], s=30, c="tab:blue", alpha=0.6
            )
            axis.plot(
                [v[index] for v in front], [v[2] for v in front], "-o", c="tab:blue", label="robopt front"
            )
        for p in final:
            axis.scatter(p[index], p[2], s=220, marker="*", c="tab:red", label="robopt final", zorder=5)
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(
            scenario["accuracy"]["label"] + (" (higher is better)" if higher else " (lower is better)")
        )
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{scenario['scenario']}: {scenario['goal']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(document: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, summary.md and the Pareto PNGs into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "results.json", "markdown": out_dir / "summary.md"}
    written["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")
    written["markdown"].write_text(summary_markdown(document))
    for scenario in document["scenarios"]:
        rows = document["setups"][scenario["setup"]]["oracle"]["rows"]
        try:
            png = pareto_png(scenario, rows, out_dir / f"pareto_{scenario['scenario']}.png")
        except (ValueError, OSError) as error:  # a plot never breaks the run's figures
            _log.warning("pareto plot failed", extra={"component": "evals", "error": str(error)})
            continue
        if png is not None:
            written[f"pareto_{scenario['scenario']}"] = png
    return written
