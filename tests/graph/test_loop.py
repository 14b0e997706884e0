"""The optimization loop on the reference VLA: the rule reasoner meets the demo goal with measured numbers,
a failing step rolls back, a crashed attempt leaves the run alive, and a fork with a new goal leaves the
original job untouched."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.base import RuleReasoner
from graph.events import Event
from graph.runner import JobResult, JobRunner
from server.cli_jobs import DEMO_GOAL
from tests.graph.support import (
    EventLog,
    ScriptedReasoner,
    attempt_children,
    store_reference,
    vla_options,
)
from tools.evaluation.report import Report
from tools.versions import VersionStore

pytestmark = pytest.mark.integration


@dataclass
class FinishedJob:
    data_dir: Path
    runner: JobRunner
    result: JobResult
    log: EventLog


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory, built_vla: Path, reference_cache: Path) -> FinishedJob:
    """The demo goal on the reference VLA, run once by the rule reasoner."""
    data_dir = tmp_path_factory.mktemp("loop") / "data"
    original = store_reference(data_dir, reference_cache, "demo")
    log = EventLog()
    runner = JobRunner(data_dir, RuleReasoner(), subscribers=[log])
    # stop at the first version that meets the goal: what this module checks is measurement, not search
    result = asyncio.run(runner.start("demo", DEMO_GOAL, original, vla_options(stop_at_first=True)))
    return FinishedJob(data_dir, runner, result, log)


def test_rule_reasoner_meets_the_demo_goal_with_measured_numbers(demo_job: FinishedJob) -> None:
    result, log = demo_job.result, demo_job.log
    assert result.status == "goal_met", result.error
    report = Report.model_validate_json(Path(result.values["report"].json_path).read_text())
    assert report.goal_met and report.comparison.speedup >= 2 and report.comparison.compression >= 3
    accepted = [a for a in result.values["attempts"] if a.status == "accepted"]
    final = accepted[-1]
    assert report.final.version_id == final.version.version_id == result.values["report"].final_version
    # every figure in the report is the one measured for that version, and the size is the file on disk
    assert (
        report.final.runtime == final.measurement.runtime
        and report.final.accuracy == final.measurement.accuracy
    )
    assert report.final.size.artifact_bytes == Path(final.version.path).stat().st_size
    assert report.baseline.accuracy.level == "closed_loop" and report.baseline.accuracy.samples == 50
    assert [e.seq for e in log.events] == list(range(1, len(log.events) + 1))
    for step in ("analyze", "optimize", "evaluate"):
        percents = [e.data["percent"] for e in log.of("progress", step=step)]
        assert percents[0] == 0 and percents[-1] == 100 and {0, 25, 50, 75, 100} <= set(percents), (
            step,
            percents,
        )
    nodes = [e.data["node"] for e in log.of("checkpoint")]
    assert {"intake", "analyze", "plan", "optimize", "evaluate", "finalize"} <= set(nodes)
    assert log.events[-2].type == "complete"  # finalize reports, then its checkpoint closes the run
    assert log.events[-1].type == "checkpoint" and log.events[-1].data["node"] == "finalize"
    assert log.of("complete")[0].data["goal_met"] is True


def test_fork_with_a_new_goal_leaves_the_original_untouched(demo_job: FinishedJob) -> None:
    runner, data_dir = demo_job.runner, demo_job.data_dir
    store = VersionStore(data_dir / "versions")
    checkpoints_before = asyncio.run(runner.checkpoints("demo"))
    versions_before = [(m.id, m.sha256) for m in store.list("demo")]
    analyzed = next(c for c in checkpoints_before if c.node == "analyze")
    new_goal = "below 2 ms on this machine, lose at most 2 points of success rate"
    forked = asyncio.run(runner.fork("demo", analyzed.checkpoint_id, "demo-fork", new_goal))
    assert forked.status in ("goal_met", "best_effort"), forked.error
    assert forked.values["goal"].criteria.max_latency_ms == 2.0 and forked.values["goal_text"] == new_goal
    assert (
        forked.values["baseline"] == demo_job.result.values["baseline"]
    )  # analysis is inherited, not redone
    assert forked.values["attempts"][0].parent_version == "v0001"
    assert [c.checkpoint_id for c in asyncio.run(runner.checkpoints("demo"))] == [
        c.checkpoint_id for c in checkpoints_before
    ]
    assert [(m.id, m.sha256) for m in store.list("demo")] == versions_before
    fork_nodes = [c.node for c in asyncio.run(runner.checkpoints("demo-fork"))]
    assert "intake" not in fork_nodes and "finalize" in fork_nodes
    assert Path(forked.values["report"].json_path).is_file()
    assert store.list("demo-fork")[0].params["imported_from"] == "demo/v0001"


def test_a_failing_step_rolls_back_and_a_crashed_attempt_leaves_the_run_alive(
    tmp_path: Path, built_vla: Path, reference_cache: Path
) -> None:
    data_dir = tmp_path / "data"
    original = store_reference(data_dir, reference_cache, "crash")
    script = {
        "planning": [
            {
                "action": "apply",
                "steps": [{"technique": "magnitude_prune", "params": {"sparsity": 0.95}}],
                "rationale": "scripted: destroys accuracy",
            },
            {
                "action": "apply",
                "steps": [
                    {"technique": "architecture_search", "params": {"n_trials": 40, "time_budget_s": 300}}
                ],
                "rationale": "scripted: killed by a segfault while it runs",
            },
        ]
    }
    log = EventLog()
    killed: list[int] = []

    def crash_attempt_two(event: Event) -> None:
        in_attempt_two = any(e.data.get("attempt") == 2 for e in log.of("status", node="optimize"))
        if in_attempt_two and not killed and event.type == "progress" and event.data["percent"] >= 25:
            for child in attempt_children():
                killed.append(child.pid)
                child.send_signal(signal.SIGSEGV)

    runner = JobRunner(data_dir, ScriptedReasoner(script), subscribers=[log, crash_attempt_two])
    result = asyncio.run(runner.start("crash", DEMO_GOAL, original, vla_options(stop_at_first=True)))
    assert killed, "the test never found the attempt's child process"
    attempts = result.values["attempts"]
    assert [a.status for a in attempts] == ["rejected", "failed", "accepted"], [
        (a.steps, a.reason) for a in attempts
    ]
    assert "SIGSEGV" in attempts[1].reason
    rollbacks = log.of("status", state="rolled_back")
    assert [r.data["to_version"] for r in rollbacks] == ["v0001", "v0001"]
    store = VersionStore(data_dir / "versions")
    final = store.get("crash", result.values["report"].final_version)
    assert final.parent == "v0001" and final.technique == "ort_int8_dynamic"
    rejected = attempts[0].version.version_id
    assert store.get("crash", rejected).technique == "magnitude_prune"  # rolled back, not deleted
    assert result.status == "goal_met"
    report = json.loads(Path(result.values["report"].json_path).read_text())
    assert [a["status"] for a in report["attempts"]] == ["baseline", "rejected", "failed", "accepted"]
