"""What the HTTP service refuses, and how: every bad goal of the intake corpus, bad uploads, auth, memory
admission, an open bind without a key, and a restart mid-job that resumes it. Real servers on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from server.history import HistoryDB
from tests.agents.intake_corpus import BAD
from tests.server.api_support import (
    API,
    REPO,
    Server,
    complete_event,
    follow_job,
    read_sse,
    server_env,
    start_server,
    upload_model,
    wait_for_status,
    write_policy_onnx,
)

pytestmark = pytest.mark.integration
KEY = "test-key-8c1f"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guards")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    running = start_server(server_env(root / "data", max_upload_bytes=12_000_000), root / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def policy_file(root: Path) -> Path:
    return write_policy_onnx(root / "policy.onnx")[0]


@pytest.fixture(scope="module")
def model_id(server: Server, policy_file: Path) -> str:
    with server.client() as client:
        return str(upload_model(client, policy_file)["id"])


def _nothing_stored(data_dir: Path, folder: str) -> bool:
    path = data_dir / folder
    return not path.exists() or not any(path.iterdir())


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_every_bad_goal_of_the_intake_corpus_is_a_4xx_with_its_message(server: Server, case: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": case.text}]}
    if case.params is not None:
        body["model_params"] = case.params
    if case.default_target is not None:
        body["target"] = case.default_target
    with server.client() as client:
        response = client.post("/chat", json=body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()
    assert case.fragment.lower() in error["message"].lower()
    if case.expect_question:
        assert error["code"] == "goal_unclear" and response.status_code == 422
    else:
        assert error["code"] in ("validation_error", "not_found")
    assert error["hint"]


def test_a_bad_goal_on_post_jobs_is_refused_and_leaves_no_job(server: Server, model_id: str) -> None:
    data_dir = Path(server.env["ROBOPT_DATA_DIR"])
    with server.client() as client:
        before = client.get("/jobs").json()["count"]
        response = client.post("/jobs", json={"model_id": model_id, "goal": "under 10 MB and at least 50 MB"})
        assert response.status_code == 422 and response.json()["code"] == "goal_unclear"
        assert "cannot both hold" in response.json()["message"]
        assert client.get("/jobs").json()["count"] == before
    assert _nothing_stored(data_dir, "versions"), "no version of a refused job is kept"


def test_a_chat_turn_answers_criteria_then_starts_the_job(server: Server, model_id: str) -> None:
    with server.client() as client:
        asked = client.post(
            "/chat", json={"messages": [{"role": "user", "content": "under 10 MB and at least 50 MB"}]}
        )
        assert asked.status_code == 422 and asked.json()["code"] == "goal_unclear"
        conversation = [
            {"role": "user", "content": "under 10 MB and at least 50 MB"},
            {"role": "assistant", "content": asked.json()["message"]},
            {"role": "user", "content": "under 10 MB, lose at most 1% accuracy"},
        ]
        dry = client.post("/chat", json={"messages": conversation})
        assert dry.status_code == 200 and dry.json()["job"] is None
        assert dry.json()["goal"]["criteria"]["max_size_mb"] == pytest.approx(10e6 / 2**20)
        started = client.post(
            "/chat", json={"messages": conversation, "model_id": model_id, "max_attempts": 1}
        )
        assert started.status_code == 202, started.text
        job = started.json()["job"]
        assert job["status"] == "queued" and "Started job" in started.json()["reply"]
        complete_event(follow_job(server, job["id"]))


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("get", "/jobs/job-0000000000", None, 404, "not_found"),
        ("get", "/models/mdl-0000000000", None, 404, "not_found"),
        ("post", "/jobs", {"model_id": "mdl-0000000000", "goal": "2x faster"}, 404, "not_found"),
        ("post", "/jobs", {"goal": "2x faster"}, 422, "validation_error"),
        ("post", "/jobs", {"reference": "no-such-reference", "goal": "2x faster"}, 404, "not_found"),
        ("post", "/jobs", {"model_id": "x", "goal": "2x", "surprise": 1}, 422, "validation_error"),
        ("post", "/chat", {"messages": []}, 422, "validation_error"),
        ("post", "/chat", {"messages": [{"role": "assistant", "content": "hi"}]}, 422, "validation_error"),
        ("get", "/jobs/job-0000000000/events", None, 404, "not_found"),
        ("get", "/no-such-route", None, 404, "not_found"),
    ],
)
def test_bad_requests_get_structured_4xx_answers(
    server: Server, method: str, path: str, body: Any, status: int, code: str
) -> None:
    with server.client() as client:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code and error["message"] and set(error) == {"code", "message", "detail", "hint"}


def test_bad_uploads_are_refused_and_leave_nothing(server: Server, root: Path) -> None:
    data_dir = Path(server.env["ROBOPT_DATA_DIR"])
    corrupt = root / "broken.onnx"
    corrupt.write_bytes(b"\x08\x07" + os.urandom(4000))
    big = root / "big.onnx"
    big.write_bytes(os.urandom(13_000_000))
    with server.client() as client:
        before = client.get("/models").json()["count"]
        bad = client.post("/models", files={"file": ("broken.onnx", corrupt.read_bytes())})
        assert bad.status_code == 422 and bad.json()["code"] in ("corrupt_file", "unsupported_format")
        too_big = client.post("/models", files={"file": ("big.onnx", big.read_bytes())})
        assert too_big.status_code == 413 and too_big.json()["code"] == "upload_too_large"
        no_file = client.post("/models", data={"name": "x"})
        assert no_file.status_code == 422
        trusted = client.post(
            "/models", files={"file": ("m.pt", b"x" * 100)}, data={"options": '{"trust_pickle": true}'}
        )
        assert (
            trusted.status_code == 422
            and "ROBOPT_ALLOW_TRUSTED_LOADS" in trusted.json()["hint"] + trusted.json()["message"]
        )
        assert client.get("/models").json()["count"] == before
        report = client.get("/jobs/job-0000000000/report")
        assert report.status_code == 404
    assert _nothing_stored(data_dir, "uploads")
    assert sorted(p.name for p in (data_dir / "models").iterdir()) == sorted(
        m["id"] for m in httpx.get(f"{server.url}{API}/models").json()["data"]
    ), "only registered models have folders"


def test_api_key_guards_every_route_but_health_and_memory_admission_answers_503(
    root: Path, policy_file: Path
) -> None:
    server = start_server(
        server_env(root / "keyed", min_free_memory_mb=10**9),
        root / "keyed.log",
        uvicorn_cli=True,
        api_key=KEY,
    )
    try:
        assert httpx.get(f"{server.url}{API}/health").status_code == 200
        anonymous = httpx.get(f"{server.url}{API}/jobs")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["code"] == "unauthorized"
        wrong = httpx.get(f"{server.url}{API}/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        with server.client() as client:
            assert client.get("/jobs").status_code == 200
            model = upload_model(client, policy_file)
            busy = client.post("/jobs", json={"model_id": model["id"], "goal": "2x faster"})
            assert busy.status_code == 503 and busy.json()["code"] == "service_busy", busy.text
            assert busy.headers["retry-after"]
            assert "estimated" in busy.json()["message"] and busy.json()["detail"]["available_mb"] > 0
            assert client.get("/jobs").json()["count"] == 0, "a refused job is not created"
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(InvalidStatus) as refused:
            with connect(f"ws://127.0.0.1:{port}{API}/jobs/job-0000000000/ws"):
                pass
        assert refused.value.response.status_code == 403, "a WebSocket without the key is refused"
    finally:
        server.stop()


def test_serve_refuses_an_open_address_without_a_key(root: Path) -> None:
    env = server_env(root / "open")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "insecure_bind" in result.stderr and "ROBOPT_API_KEY" in result.stderr


def test_a_restart_mid_job_resumes_it_and_loses_nothing(root: Path, policy_file: Path) -> None:
    data_dir = root / "restart"
    env = server_env(data_dir)
    first = start_server(env, root / "restart-1.log")
    try:
        with first.client() as client:
            model = upload_model(client, policy_file)
            response = client.post(
                "/jobs", json={"model_id": model["id"], "goal": "at least 20x smaller", "max_attempts": 3}
            )
            job_id = response.json()["job"]["id"]
        with httpx.stream("GET", f"{first.url}{API}/jobs/{job_id}/events", timeout=300) as stream:
            for event in read_sse(stream):
                if event["type"] == "progress" and event["data"]["step"] == "optimize":
                    break  # the first attempt's child is running
    finally:
        first.kill()  # a power cut: no shutdown code runs
    history = HistoryDB.for_data_dir(data_dir)
    assert history.get_job(job_id).status == "running"
    seen = history.last_seq(job_id)
    second = start_server(env, root / "restart-2.log")
    try:
        with second.client() as client:
            events = follow_job(second, job_id)
            job = wait_for_status(client, job_id, {"succeeded", "best_effort"})
    finally:
        second.stop()
    seqs = [e["seq"] for e in events]
    assert seqs == list(
        range(1, len(seqs) + 1)
    ), "one numbering across both servers, nothing lost or repeated"
    assert len(seqs) > seen
    assert any(e["data"].get("state") == "resumed" for e in events[seen:] if e["type"] == "status")
    assert job["attempts_count"] == len({a["index"] for a in job["attempts"]}) >= 1
    complete_event(events)
    assert not [p for p in psutil.process_iter(["cmdline"]) if job_id in " ".join(p.info["cmdline"] or [])]
