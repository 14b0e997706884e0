"""The HTTP service end to end, against a real `robopt serve` on 127.0.0.1: upload → job → events → report →
download; reconnecting streams; two jobs at once; cancel; replay from a checkpoint."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from websockets.sync.client import connect

from tests.server.api_support import (
    API,
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
GOAL = "at least 2x smaller, lose at most 1% accuracy"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service for the module: two jobs may run at once."""
    root = tmp_path_factory.mktemp("api")
    env = server_env(root / "data", max_concurrent_jobs=2)
    running = start_server(env, root / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def policy(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The WideMLP policy uploaded once; its answer (id, profile) and its parameter count."""
    path, params = write_policy_onnx(tmp_path_factory.mktemp("policy") / "policy.onnx")
    with server.client() as client:
        answer = upload_model(client, path, name="wide-mlp")
    return {**answer, "expected_params": params, "local_path": path}


def _start(client: httpx.Client, model_id: str, goal: str = GOAL, **extra: Any) -> dict[str, Any]:
    response = client.post("/jobs", json={"model_id": model_id, "goal": goal, "max_attempts": 2, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def _assert_in_order(events: list[dict[str, Any]], first: int = 1) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(first, first + len(seqs))), f"events out of order or missing: {seqs}"


def test_upload_answers_the_measured_profile_and_lists_the_model(
    server: Server, policy: dict[str, Any]
) -> None:
    assert policy["id"].startswith("mdl-")
    assert policy["format"] == "onnx"
    assert policy["params"] == policy["expected_params"]
    assert policy["size_bytes"] == policy["local_path"].stat().st_size
    assert policy["sha256"] == hashlib.sha256(policy["local_path"].read_bytes()).hexdigest()
    with server.client() as client:
        listed = client.get("/models").json()
        assert policy["id"] in [m["id"] for m in listed["data"]]
        assert client.get(f"/models/{policy['id']}").json()["params"] == policy["expected_params"]


def test_a_job_runs_from_upload_to_report_with_every_event_in_order(
    server: Server, policy: dict[str, Any], tmp_path: Path
) -> None:
    with server.client() as client:
        accepted = _start(client, policy["id"], stop_at_first=True)
        job_id = accepted["job"]["id"]
        assert accepted["goal"]["criteria"]["min_compression"] == 2.0
        assert accepted["goal"]["stop_at_first"] is True  # the API field, as the goal carries it
        events = follow_job(server, job_id)
        _assert_in_order(events)
        types = [e["type"] for e in events]
        assert types[-2:] == ["complete", "checkpoint"]  # the closing checkpoint stored after complete, too
        assert complete_event(events)["seq"] == events[-2]["seq"]
        assert {"status", "progress", "attempt", "checkpoint"} <= set(types)
        progress = [e["data"]["percent"] for e in events if e["type"] == "progress"]
        assert 100 in progress
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["goal_met"] is True
        assert job["attempts"] and job["attempts"][0]["technique"]

        report = client.get(f"/jobs/{job_id}/report").json()
        assert report["goal_met"] is True
        assert report["search_stop"]["rule"] == "goal_met_stop_at_first"
        assert [a["status"] for a in report["attempts"]][-1] == "accepted"  # ended at the first passing one
        markdown = client.get(f"/jobs/{job_id}/report", params={"format": "md"})
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert "goal met" in markdown.text.lower()

        download = client.get(f"/jobs/{job_id}/artifacts/{job['best_version']}")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == download.headers["x-robopt-sha256"]
    artifact = tmp_path / "optimized.onnx"
    artifact.write_bytes(download.content)
    assert artifact.stat().st_size * 2 <= policy["size_bytes"], "the goal was 2x smaller"
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    state = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    original = ort.InferenceSession(str(policy["local_path"]), providers=["CPUExecutionProvider"])
    got, want = session.run(None, {"state": state})[0], original.run(None, {"state": state})[0]
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.99, "the downloaded model must still compute the policy"

    with connect(f"ws://127.0.0.1:{server.url.rsplit(':', 1)[1]}{API}/jobs/{job_id}/ws") as websocket:
        replayed = [json.loads(message) for message in websocket]
    assert [e["seq"] for e in replayed] == [e["seq"] for e in events], "the WebSocket replays the same events"
    assert {e["type"] for e in replayed} <= {
        "progress",
        "status",
        "attempt",
        "checkpoint",
        "error",
        "complete",
    }


def test_reconnecting_with_last_event_id_loses_no_event(server: Server, policy: dict[str, Any]) -> None:
    with server.client() as client:
        job_id = _start(client, policy["id"])["job"]["id"]
        with httpx.stream("GET", f"{server.url}{API}/jobs/{job_id}/events", timeout=300) as response:
            first = list(read_sse(response, limit=3))  # the client leaves after three events
        assert [e["seq"] for e in first] == [1, 2, 3]
        time.sleep(1.0)  # the job goes on while nobody listens
        rest = follow_job(server, job_id, after=first[-1]["seq"])
        assert rest[0]["seq"] == 4
        _assert_in_order(first + rest)
        complete_event(rest)
        everything = follow_job(server, job_id)
    assert [e["seq"] for e in everything] == [e["seq"] for e in first + rest]
    assert everything == first + rest


def test_two_jobs_run_at_once_and_both_finish(server: Server, policy: dict[str, Any]) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    with server.client() as client:
        ids = [_start(client, policy["id"], goal=goal)["job"]["id"] for goal in (GOAL, "as fast as possible")]

        def follow(job_id: str) -> None:
            results[job_id] = follow_job(server, job_id)

        threads = [threading.Thread(target=follow, args=(job_id,)) for job_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        jobs = [client.get(f"/jobs/{job_id}").json() for job_id in ids]
    assert all(complete_event(results[job_id]) for job_id in ids)
    assert all(job["status"] in ("succeeded", "best_effort") for job in jobs)
    first_starts = [next(e["time"] for e in results[job_id] if e["type"] == "status") for job_id in ids]
    first_ends = [results[job_id][-1]["time"] for job_id in ids]
    assert max(first_starts) < min(first_ends), "with two slots the second job starts before the first ends"


def test_cancel_stops_a_running_job_and_its_child_process(server: Server, policy: dict[str, Any]) -> None:
    with server.client() as client:
        job_id = _start(client, policy["id"], goal="as fast as possible", max_attempts=8)["job"]["id"]
        with httpx.stream("GET", f"{server.url}{API}/jobs/{job_id}/events", timeout=300) as response:
            for event in read_sse(response):
                if event["type"] == "progress" and event["data"].get("step") == "optimize":
                    break
        answer = client.post(f"/jobs/{job_id}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        events = follow_job(server, job_id)
        assert complete_event(events)["data"]["status"] == "cancelled"
        job = wait_for_status(client, job_id, {"cancelled"})
        assert job["finished"] is not None
        again = client.post(f"/jobs/{job_id}/cancel")
        assert again.status_code == 409 and again.json()["code"] == "conflict"
    server_process = psutil.Process(server.process.pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        attempts = [
            p
            for p in server_process.children(recursive=True)
            if f"robopt-isolated-{job_id}" in " ".join(p.cmdline())
        ]
        if not attempts:
            break
        time.sleep(0.2)
    assert not attempts, "the cancelled job's child process must be gone"


def test_replay_from_a_checkpoint_with_a_changed_goal_is_a_new_linked_job(
    server: Server, policy: dict[str, Any]
) -> None:
    with server.client() as client:
        parent = _start(client, policy["id"])["job"]["id"]
        follow_job(server, parent)
        before = client.get(f"/jobs/{parent}").json()
        checkpoints = client.get(f"/jobs/{parent}/checkpoints").json()["data"]
        assert checkpoints and [c["step"] for c in checkpoints] == sorted(c["step"] for c in checkpoints)
        after_analyze = next(c for c in checkpoints if c["node"] == "analyze")
        answer = client.post(
            f"/jobs/{parent}/replay",
            json={"checkpoint_id": after_analyze["checkpoint_id"], "goal": "3x smaller"},
        )
        assert answer.status_code == 202, answer.text
        child = answer.json()["job"]
        assert (
            child["parent_job_id"] == parent and child["fork_checkpoint_id"] == after_analyze["checkpoint_id"]
        )
        assert answer.json()["goal"]["criteria"]["min_compression"] == 3.0
        events = follow_job(server, child["id"])
        complete_event(events)
        assert any(e["data"].get("state") == "forked" for e in events if e["type"] == "status")
        finished = wait_for_status(client, child["id"], {"succeeded", "best_effort"})
        assert finished["goal"] == "3x smaller"
        assert (
            client.get(f"/jobs/{parent}").json()["attempts"] == before["attempts"]
        ), "the parent is untouched"
        missing = client.post(f"/jobs/{parent}/replay", json={"checkpoint_id": "no-such-checkpoint"})
        assert missing.status_code == 404


def test_health_metrics_and_openapi(server: Server) -> None:
    with server.client() as client:
        metrics = client.get("/metrics").json()
        assert metrics["jobs"]["succeeded"] >= 1 and metrics["attempts"] >= 1
        assert metrics["memory"]["available_mb"] > 0 and metrics["queue"]["max_concurrent_jobs"] == 2
        prometheus = client.get("/metrics", params={"format": "prometheus"}).text
        assert 'robopt_jobs{status="succeeded"}' in prometheus
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/api/v1/models", "/api/v1/jobs", "/api/v1/jobs/{job_id}/events", "/api/v1/chat"):
        assert path in schema["paths"], path
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_a_state_dict_uploads_with_its_config_and_architecture(server: Server, tmp_path: Path) -> None:
    from tests.model_zoo import TinyMLP, write_all_formats

    files = write_all_formats(tmp_path)
    with server.client() as client, files["state_dict"].open("rb") as weights:
        response = client.post(
            "/models",
            files={
                "file": ("tiny_state.pt", weights),
                "config": ("config.json", files["config"].read_bytes()),
            },
            data={"options": json.dumps({"architecture": "tests.model_zoo:TinyMLP"})},
        )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["params"] == sum(p.numel() for p in TinyMLP().parameters())
    assert model["options"]["architecture"] == "tests.model_zoo:TinyMLP"
    assert Path(model["options"]["config_path"]).is_relative_to(Path(server.env["ROBOPT_DATA_DIR"]).resolve())


def test_labelled_data_makes_the_job_judge_by_a_task_metric(
    server: Server, policy: dict[str, Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    states = rng.standard_normal((64, 64), dtype=np.float32)
    original = ort.InferenceSession(str(policy["local_path"]), providers=["CPUExecutionProvider"])
    policy_actions = np.concatenate([original.run(None, {"state": s[None]})[0] for s in states])
    actions = policy_actions + 0.05 * rng.standard_normal(
        policy_actions.shape, dtype=np.float32
    )  # expert demos
    np.savez(tmp_path / "demos.npz", state=states, actions=actions)
    with server.client() as client:
        uploaded = client.post(
            "/datasets", files={"file": ("demos.npz", (tmp_path / "demos.npz").read_bytes())}
        )
        assert uploaded.status_code == 201, uploaded.text
        dataset = uploaded.json()
        assert dataset["has_labels"] and dataset["arrays"] == {"state": [64, 64], "actions": [64, 8]}
        job_id = _start(client, policy["id"], dataset_id=dataset["id"])["job"]["id"]
        complete_event(follow_job(server, job_id))
        report = client.get(f"/jobs/{job_id}/report").json()
        bad = client.post("/datasets", files={"file": ("demos.npz", b"not an npz at all")})
    assert report["criteria"]["accuracy_level"] == "task"
    assert bad.status_code == 422
    assert not (Path(server.env["ROBOPT_DATA_DIR"]) / "datasets" / "x").exists()
