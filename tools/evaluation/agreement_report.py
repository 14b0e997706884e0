"""The report's closed-loop agreement section: per-step action error, trajectory divergence, success rates."""

from __future__ import annotations

from tools.evaluation.types import AccuracyResult


def agreement_section(result: AccuracyResult | None) -> list[str]:
    """Markdown lines describing a closed-loop agreement figure (none when there is no such figure)."""
    if result is None or result.level != "closed_loop_agreement":
        return []
    d = result.details
    simulator = d.get("simulator", {})
    divergence = d.get("trajectory_divergence", {})
    lines = [
        "## Closed-loop agreement",
        "",
        f"Simulator `{simulator.get('name', '?')}`, {len(d.get('episodes', []))} episodes from seed {d.get('seed')}; "
        "the original drives and the candidate acts on the same observations, then the candidate drives the "
        "same seeds.",
        "",
        f"- per-step action error: normalized {d['action_normalized_error']:.4g} (of the actions' variation), "
        f"relative L2 {d['action_relative_l2']:.4g}, max abs {d['action_max_abs_error']:.4g}, "
        f"mean abs {d['action_mean_abs_error']:.4g} (action scale {d['action_scale']:.4g}) over "
        f"{d['compared_steps']} executed steps",
    ]
    if divergence.get("available"):
        lines.append(
            f"- trajectory divergence: mean {divergence['mean']:.4g}, max {divergence['max']:.4g}, final "
            f"{divergence['final']:.4g} ({divergence['relative_to_motion']:.3g} of the original's own motion)"
        )
    lines.append(
        f"- success rate: original {d['original_success_rate']:.3g}, candidate {d['candidate_success_rate']:.3g} "
        "(meaningful only with trained weights)"
    )
    return lines + [""]
