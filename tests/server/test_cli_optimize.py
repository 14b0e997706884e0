"""`robopt optimize` / `resume` / `checkpoints` / `jobs` / `history` as a user runs them: real processes, a real
data directory, exit codes 0 (goal met), 3 (best effort), 2 (bad input or a question back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.cli_jobs import DEMO_GOAL
from server.history import HistoryDB

REPO = Path(__file__).resolve().parents[2]


def _env(data_dir: Path, reference_cache: Path) -> dict[str, str]:
    keys = ("OPENAI_API_KEY", "ROBOPT_LLM_API_KEY")
    return {
        **{name: value for name, value in os.environ.items() if name not in keys},
        "ROBOPT_DATA_DIR": str(data_dir),
        "ROBOPT_REFERENCE_CACHE_DIR": str(reference_cache),
        "ROBOPT_LATENCY_ITERATIONS": "20",
    }


def _robopt(
    env: dict[str, str], *args: str, timeout: float = 600, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
def test_killed_mid_run_resumes_from_the_last_checkpoint(
    tmp_path: Path, built_vla: Path, reference_cache: Path
) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir, reference_cache)
    command = [sys.executable, "-m", "server.cli", "optimize", "vla", "--goal", DEMO_GOAL]
    command += ["--sim", "reaching", "--episodes", "30", "--max-attempts", "3", "--stop-at-first"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    history, job_id, planned = None, None, None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and planned is None:
            time.sleep(0.5)
            if history is None and (data_dir / "optimization_history.db").exists():
                history = HistoryDB.for_data_dir(data_dir)
            jobs = history.list_jobs() if history else []
            if jobs:
                job_id = jobs[0].id
                planned = next(
                    (
                        e
                        for e in history.events(job_id)
                        if e.type == "checkpoint" and e.data.get("node") == "plan"
                    ),
                    None,
                )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert history is not None and job_id is not None and planned is not None, "the run never reached a plan"
    assert history.get_job(job_id).status == "running"  # killed: nobody settled it
    seqs_before = [e.seq for e in history.events(job_id)]

    resumed = _robopt(env, "resume", job_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "GOAL MET" in resumed.stdout
    listing = _robopt(env, "checkpoints", job_id, "--json")
    checkpoints = json.loads(listing.stdout)
    nodes = [c["node"] for c in checkpoints]
    assert nodes.count("intake") == 1 and nodes.count("analyze") == 1  # not redone after the kill
    assert planned.data["checkpoint_id"] in [c["checkpoint_id"] for c in checkpoints]
    assert nodes[-1] == "finalize"
    seqs = [e.seq for e in history.events(job_id)]
    assert seqs[: len(seqs_before)] == seqs_before and seqs == list(range(1, len(seqs) + 1))
    assert any(e.data.get("state") == "resumed" for e in history.events(job_id))
    job = history.get_job(job_id)
    assert job.status == "succeeded" and job.goal_met is True and job.finished is not None

    jobs = _robopt(env, "jobs")
    assert job_id in jobs.stdout and "succeeded" in jobs.stdout
    shown = _robopt(env, "history", job_id)
    assert "ort_int8_dynamic" in shown.stdout and "accepted" in shown.stdout


@pytest.mark.integration
def test_an_impossible_goal_ends_in_best_effort_naming_what_is_missing(
    tmp_path: Path, built_vla: Path, reference_cache: Path
) -> None:
    env = _env(tmp_path / "data", reference_cache)
    out = tmp_path / "out"
    goal = "at least 60x faster on this machine, lose at most 2 points of success rate"
    result = _robopt(
        env,
        "optimize",
        "vla",
        "--goal",
        goal,
        "--sim",
        "reaching",
        "--episodes",
        "30",
        "--max-attempts",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "BEST EFFORT" in result.stdout and "missing min_speedup" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["goal_met"] is False
    missing = {m["name"]: m for m in report["missing"]}
    assert missing["min_speedup"]["margin"] < 0 and missing["min_speedup"]["value"] > 1.5
    assert len(report["attempts"]) <= 3  # the baseline and at most two attempts
    assert any(path.suffix == ".onnx" for path in out.iterdir())  # the best effort is delivered


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "no-such-model.pt", "--goal", "4x smaller"], "model not found"),
        (["optimize", "vla", "--goal", "   "], "the goal is empty"),
        (["optimize", "vla", "--goal", "under 10 MB and at least 50 MB"], "needs an answer"),
        (["optimize", "vla", "--goal", "4x smaller", "--max-attempts", "0"], "--max-attempts"),
        (["optimize", "vla", "--goal", "4x smaller", "--sim", "no-such-sim"], "no-such-sim"),
        (["resume", "job-missing"], "job-missing"),
        (
            ["optimize", "vla", "--goal", "4x smaller", "--reasoner", "openai"],
            "no API key for the LLM reasoner",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_running(
    tmp_path: Path, built_vla: Path, reference_cache: Path, args: list[str], message: str
) -> None:
    data_dir = tmp_path / "data"
    result = _robopt(_env(data_dir, reference_cache), *args, timeout=300)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert message in result.stderr
    if (data_dir / "optimization_history.db").exists():
        statuses = {job.status for job in HistoryDB.for_data_dir(data_dir).list_jobs()}
        assert statuses <= {"needs_input"}
    assert not [p for p in tmp_path.iterdir() if p.name != "data"]  # nothing written outside the data dir


@pytest.mark.integration
def test_demo_meets_its_default_goal_with_a_measured_report(
    tmp_path: Path, built_vla: Path, reference_cache: Path
) -> None:
    """Run the way `python3 run_robopt.py` runs it: from the working folder, with the relative data dir 'data'."""
    env = {**_env(tmp_path / "data", reference_cache), "ROBOPT_DATA_DIR": "data"}
    result = _robopt(env, "demo", "--stop-at-first", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GOAL MET" in result.stdout and "(estimated)" in result.stdout
    (out,) = (tmp_path / "data" / "out").iterdir()
    report = json.loads((out / "report.json").read_text())
    assert report["goal_met"] is True and report["baseline"]["accuracy"]["level"] == "closed_loop"
    assert report["search_stop"]["rule"] == "goal_met_stop_at_first"  # --stop-at-first: today's single pass
    assert [a["status"] for a in report["attempts"]][-1] == "accepted"
    artifact = next(p for p in out.iterdir() if p.suffix == ".onnx")
    assert report["final"]["size"]["artifact_bytes"] == artifact.stat().st_size
    orin = next(t for t in report["targets"] if t["target"] == "jetson-orin-nano-8gb")
    assert orin["measured"] is False and orin["projected"]["estimated"] is True
    assert (out / "report.md").is_file() and (out / "pareto.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing outside the data dir
