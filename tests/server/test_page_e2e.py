"""The web page end to end in a real headless Chromium: `frontend/src/tests/e2e/workflow.mjs` (playwright-core, the
system /usr/bin/chromium) uploads a user-exported ONNX policy on Models, types a goal on Chat and starts the job,
follows it to 100% on the job view and opens its report and download, saving a screenshot after each step; the API
then confirms that the job the page started succeeded and met its goal. The screenshots go to the test's tmp
folder (printed with `-s`), or to ROBOPT_E2E_SCREENSHOTS when set.

`workflows.mjs` beside it drives the shorter workflows, one test each: a vague goal answered in the same
conversation, a finished job replayed from a checkpoint with a changed goal, a service that needs its API key, and
`robopt demo`'s goal run on the reference VLA picked in Chat.

Outside CI a machine without Chromium, node or the built page skips these tests; in CI (the `CI` environment
variable set, as `.ci/run` does) a missing prerequisite fails them, naming what is missing and how to get it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.api_support import (
    API,
    REPO,
    Server,
    follow_job,
    server_env,
    start_server,
    upload_model,
    wait_for_status,
)
from tests.server.test_user_policies import write_onnx

pytestmark = pytest.mark.integration

FRONTEND = REPO / "frontend"
WORKFLOW = FRONTEND / "src" / "tests" / "e2e" / "workflow.mjs"
WORKFLOWS = FRONTEND / "src" / "tests" / "e2e" / "workflows.mjs"
CHROMIUM = Path("/usr/bin/chromium")
GOAL = "at least 2x smaller, keep accuracy within 5%, stop at the first that meets it"
SCREENSHOTS = ("models.png", "chat.png", "job.png", "report.png")
NODE_TIMEOUT_S = 480
SHORT_NODE_TIMEOUT_S = 90
ENDED = {"succeeded", "best_effort", "failed", "cancelled"}


def _missing() -> str | None:
    """Why this machine cannot run the browser test, or None when it can."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if shutil.which("node") is None:
        return "no node on PATH (the browser test is driven by Node.js 20: apt-get install nodejs npm)"
    if not (FRONTEND / "dist" / "index.html").is_file():
        return "the web page is not built (cd frontend && npm ci && npm run build)"
    if not (FRONTEND / "node_modules" / "playwright-core").is_dir():
        return "frontend/node_modules/playwright-core is missing (cd frontend && npm ci)"
    return None


def require_browser_prerequisites() -> None:
    """Skip the test when the browser test cannot run here; fail it instead in CI, where it must run."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test, but {reason}", pytrace=False)
    pytest.skip(reason)


def test_a_missing_prerequisite_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys.modules[__name__], "_missing", lambda: "no Chromium at /x (apt-get install chromium)"
    )
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no Chromium at /x \(apt-get install chromium\)"):
        require_browser_prerequisites()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        require_browser_prerequisites()


def test_the_page_uploads_a_model_starts_a_job_from_a_goal_and_shows_its_report(tmp_path: Path) -> None:
    require_browser_prerequisites()
    model = write_onnx(tmp_path / "policy.onnx")
    shots = Path(os.environ.get("ROBOPT_E2E_SCREENSHOTS") or tmp_path / "screenshots")
    # max_attempts bounds the job if the first attempt misses; "stop at the first" ends it at the first that meets
    server = start_server(server_env(tmp_path / "data", max_attempts=3), tmp_path / "server.log")
    try:
        run = subprocess.run(
            ["node", str(WORKFLOW), server.url, str(model), str(shots)],
            cwd=FRONTEND,
            env={**os.environ, "E2E_GOAL": GOAL, "E2E_JOB_TIMEOUT_S": "300"},
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
        )
        print(run.stdout[-6000:], run.stderr[-3000:], sep="\n")
        assert run.returncode == 0, (
            f"the browser workflow failed (exit {run.returncode}); screenshots in {shots}\n"
            f"{run.stdout[-4000:]}\n{run.stderr[-3000:]}\nserver log:\n{server.log_tail()}"
        )
        for name in SCREENSHOTS:
            path = shots / name
            assert path.is_file() and path.stat().st_size > 10_000, f"{path} is missing or under 10 kB"
        print(f"screenshots of the page: {shots}")

        result = json.loads((shots / "result.json").read_text())
        assert result.get("job_id") and result.get("model_id"), result
        assert result["attempt_rows"] >= 1 and result["download"]["bytes"] > 0, result
        with server.client() as client:
            job = client.get(f"/jobs/{result['job_id']}").json()
            assert job["status"] == "succeeded" and job["goal_met"] is True, (job, server.log_tail())
            assert job["goal"] == GOAL and job["attempts_count"] == result["attempt_rows"], (job, result)
            uploaded = client.get(f"/models/{result['model_id']}").json()
            assert uploaded["format"] == "onnx" and job["model"] == uploaded["name"], (job, uploaded)
            jobs = client.get("/jobs").json()["data"]
            assert [j["id"] for j in jobs] == [job["id"]], jobs  # the page started exactly one job
            report = client.get(f"/jobs/{result['job_id']}/report").json()
            assert report["goal_met"] and report["comparison"]["compression"] >= 2, report["comparison"]
            assert result["download"]["filename"].endswith(".onnx"), result["download"]
    finally:
        server.stop()


def run_workflow(
    name: str, server: Server, shots: Path, timeout: float = SHORT_NODE_TIMEOUT_S, **env: str
) -> dict[str, Any]:
    """Run one workflow of workflows.mjs against the server; assert it passed; return its result.json."""
    run = subprocess.run(
        ["node", str(WORKFLOWS), name, server.url, str(shots)],
        cwd=FRONTEND,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(run.stdout[-6000:], run.stderr[-3000:], sep="\n")
    assert run.returncode == 0, (
        f"the browser workflow {name} failed (exit {run.returncode}); screenshots in {shots}\n"
        f"{run.stdout[-4000:]}\n{run.stderr[-3000:]}\nserver log:\n{server.log_tail()}"
    )
    return json.loads((shots / "result.json").read_text())


def screenshots_dir(tmp_path: Path, name: str) -> Path:
    """Where a workflow's screenshots go: ROBOPT_E2E_SCREENSHOTS/<name> when set, else the test's tmp folder."""
    root = os.environ.get("ROBOPT_E2E_SCREENSHOTS")
    return Path(root) / name if root else tmp_path / "screenshots"


def test_the_page_asks_about_a_vague_goal_and_reads_the_answer_in_the_same_conversation(
    tmp_path: Path,
) -> None:
    require_browser_prerequisites()
    server = start_server(server_env(tmp_path / "data"), tmp_path / "server.log")
    try:
        result = run_workflow("clarify", server, screenshots_dir(tmp_path, "clarify"))
        assert "make it better" in result["question"] and "min compression" in result["criteria"], result
        with server.client() as client:
            assert client.get("/jobs").json()["count"] == 0, "talking about the goal starts no job"
    finally:
        server.stop()


def test_the_page_replays_a_finished_job_from_a_checkpoint_with_a_changed_goal(tmp_path: Path) -> None:
    require_browser_prerequisites()
    model = write_onnx(tmp_path / "policy.onnx")
    server = start_server(server_env(tmp_path / "data", max_attempts=2), tmp_path / "server.log")
    try:
        with server.client() as client:
            uploaded = upload_model(client, model)
            started = client.post("/jobs", json={"model_id": uploaded["id"], "goal": GOAL})
            assert started.status_code == 202, started.text
            parent = started.json()["job"]["id"]
            follow_job(server, parent, timeout=120)
            before = wait_for_status(client, parent, ENDED, timeout=30)
            checkpoints_before = client.get(f"/jobs/{parent}/checkpoints").json()["data"]

            result = run_workflow(
                "replay",
                server,
                screenshots_dir(tmp_path, "replay"),
                E2E_JOB_ID=parent,
                E2E_REPLAY_GOAL="3x smaller",
            )

            child = client.get(f"/jobs/{result['job_id']}").json()
            replayed_from = next(c for c in checkpoints_before if c["step"] == result["checkpoint_step"])
            assert child["parent_job_id"] == parent and child["goal"] == "3x smaller", child
            assert (
                child["fork_checkpoint_id"] == replayed_from["checkpoint_id"]
                and replayed_from["node"] == "analyze"
            )
            client.post(f"/jobs/{child['id']}/cancel")
            wait_for_status(client, child["id"], ENDED, timeout=60)
            after = client.get(f"/jobs/{parent}").json()
            unchanged = (
                "status",
                "goal",
                "goal_met",
                "best_version",
                "attempts",
                "finished",
                "parent_job_id",
            )
            assert {k: after[k] for k in unchanged} == {
                k: before[k] for k in unchanged
            }, "the parent is untouched"
            assert client.get(f"/jobs/{parent}/checkpoints").json()["data"] == checkpoints_before
            assert sorted(j["id"] for j in client.get("/jobs").json()["data"]) == sorted(
                [child["id"], parent]
            )
    finally:
        server.stop()


def test_the_page_asks_for_the_api_key_again_after_a_wrong_one_and_then_loads(tmp_path: Path) -> None:
    require_browser_prerequisites()
    key = "e2e-key-0123456789"
    server = start_server(server_env(tmp_path / "data"), tmp_path / "server.log", api_key=key)
    try:
        with server.client() as client:
            uploaded = upload_model(client, write_onnx(tmp_path / "policy.onnx"))
        with httpx.Client(base_url=server.url + API) as anonymous:
            assert anonymous.get("/models").status_code == 401, "the service must need its key"
        run_workflow(
            "apikey",
            server,
            screenshots_dir(tmp_path, "apikey"),
            E2E_API_KEY=key,
            E2E_WRONG_KEY="not-" + key,
            E2E_MODEL_ID=uploaded["id"],
        )
    finally:
        server.stop()


def test_the_page_runs_the_demo_goal_on_the_reference_vla_picked_in_chat(
    tmp_path: Path, reference_cache: Path, built_vla: Path
) -> None:
    """`robopt demo` from the page: the reference VLA, judged in its reaching simulator, toward the demo goal."""
    from server.cli_jobs import DEMO_GOAL

    require_browser_prerequisites()
    # one attempt bounds the run (per-tensor INT8 meets the demo goal first; README "robopt demo")
    server = start_server(
        server_env(tmp_path / "data", reference_cache, max_attempts=1), tmp_path / "server.log"
    )
    try:
        result = run_workflow(
            "reference",
            server,
            screenshots_dir(tmp_path, "reference"),
            timeout=NODE_TIMEOUT_S,
            E2E_REFERENCE="vla",
            E2E_GOAL=DEMO_GOAL,
            E2E_JOB_TIMEOUT_S="360",
        )
        with server.client() as client:
            jobs = client.get("/jobs").json()["data"]
            assert [job["id"] for job in jobs] == [result["job_id"]], jobs  # the page started exactly one job
            job = jobs[0]
            assert job["model"] == "vla" and job["goal"] == DEMO_GOAL, job
            assert job["status"] in ENDED - {"failed", "cancelled"}, (job, server.log_tail())
            report = client.get(f"/jobs/{job['id']}/report").json()
        accuracy = report["comparison"]["accuracy"]
        assert accuracy["level"] == "closed_loop" and accuracy["metric"] == "success_rate", accuracy
        assert report["goal_met"] == job["goal_met"] and result["page_summary"].startswith(
            "Goal met" if job["goal_met"] else "Goal not met"
        ), (report["goal_met"], result)
    finally:
        server.stop()
