"""The evaluate node in the search for a better version: a candidate whose size and latency, measured first,
show it cannot beat the best passing version is rejected without its (closed-loop) accuracy being measured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from graph.runner import JobRunner
from tests.graph.support import EventLog, ScriptedReasoner, store_reference, vla_options
from tools.evaluation.evaluate import AccuracyPlan
from tools.versions import VersionStore

pytestmark = pytest.mark.integration


def test_a_candidate_no_smaller_than_the_best_is_rejected_before_its_closed_loop_run(
    tmp_path: Path, built_vla: Path, reference_cache: Path
) -> None:
    """The original already meets a size goal, so the search looks for a smaller version; the scripted plan
    prunes weights in place (the dense file is as large), so the candidate is rejected on its size alone and
    the job ends with the original."""
    data_dir = tmp_path / "data"
    original = store_reference(data_dir, reference_cache, "cheap")
    script = {
        "planning": [
            {
                "action": "apply",
                "steps": [{"technique": "magnitude_prune", "params": {"sparsity": 0.3}}],
                "rationale": "scripted: zeroes weights, the file stays as large",
            }
        ]
    }
    log = EventLog()
    options = vla_options(
        accuracy=AccuracyPlan(level="closed_loop", simulator="reaching", episodes=10), max_attempts=1
    )
    runner = JobRunner(data_dir, ScriptedReasoner(script), subscribers=[log])
    goal = "under 100 MB, lose at most 5 points of success rate"
    result = asyncio.run(runner.start("cheap", goal, original, options))

    assert result.status == "goal_met", (result.error, [a.reason for a in result.values.get("attempts", [])])
    (attempt,) = result.values["attempts"]
    measured = attempt.measurement
    assert attempt.status == "rejected" and attempt.judged_by == "rules", attempt.reason
    assert measured is not None and measured.accuracy is None and measured.accuracy_skipped
    assert measured.runtime is not None and measured.size is not None
    reason = attempt.reason
    assert "beats_best" in reason and "not better on size" in reason and "accuracy not measured" in reason
    assert f"{measured.size.artifact_bytes:,} bytes against" in reason, reason
    assert f"best passing version {original.version_id}" in reason, reason
    # the closed-loop episodes ran for the baseline only: no evaluate step announced an accuracy measurement
    evaluating = [e.data["message"] for e in log.of("progress", step="evaluate")]
    assert evaluating and not any("accuracy" in m and "measuring" in m for m in evaluating), evaluating
    (event,) = log.of("attempt", index=1)
    assert event.data["status"] == "rejected" and event.data["accuracy"] is None
    # the job ends with the best version (the original), the rejected one stored but not chosen
    report = result.values["report"]
    assert report.final_version == original.version_id and report.goal_met
    assert VersionStore(data_dir / "versions").get("cheap", attempt.version.version_id).technique == (
        "magnitude_prune"
    )
