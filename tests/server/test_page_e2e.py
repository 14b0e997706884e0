"""The web page end to end in a real headless Chromium: `frontend/src/tests/e2e/workflow.mjs` (playwright-core, the
system /usr/bin/chromium) uploads a user-exported ONNX policy on Models, types a goal on Chat and starts the job,
follows it to 100% on the job view and opens its report and download, saving a screenshot after each step; the API
then confirms that the job the page started succeeded and met its goal. The screenshots go to the test's tmp
folder (printed with `-s`), or to ROBOPT_E2E_SCREENSHOTS when set.

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

import pytest

from tests.server.api_support import REPO, server_env, start_server
from tests.server.test_user_policies import write_onnx

pytestmark = pytest.mark.integration

FRONTEND = REPO / "frontend"
WORKFLOW = FRONTEND / "src" / "tests" / "e2e" / "workflow.mjs"
CHROMIUM = Path("/usr/bin/chromium")
GOAL = "at least 2x smaller, keep accuracy within 5%, stop at the first that meets it"
SCREENSHOTS = ("models.png", "chat.png", "job.png", "report.png")
NODE_TIMEOUT_S = 480


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
