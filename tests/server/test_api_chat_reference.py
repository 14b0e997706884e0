"""POST /api/v1/chat on a bundled reference model (issue 17): the page can run a goal on a reference by name, as
POST /jobs can. A real `robopt serve` on 127.0.0.1 with the rule reasoner (no LLM key), its reference cache
prebuilt once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.server.api_support import (
    Server,
    complete_event,
    follow_job,
    server_env,
    start_server,
    upload_model,
    write_policy_onnx,
)
from tools.reference import REFERENCE_MODELS
from tools.reference.shipped import shipped_parameter_count

pytestmark = pytest.mark.integration
REFERENCE = "conv_policy"  # the smallest trained reference the reaching task judges: built in seconds
GOAL = "at least 2x smaller, lose at most 5% accuracy"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, reference_cache: Path, built_conv_policy: Path
) -> Iterator[Server]:
    """One service whose reference cache already holds the ConvPolicy."""
    root = tmp_path_factory.mktemp("chat-reference")
    running = start_server(server_env(root / "data", reference_cache), root / "server.log")
    yield running
    running.stop()


def _turn(goal: str = GOAL) -> list[dict[str, Any]]:
    return [{"role": "user", "content": goal}]


def test_a_chat_turn_on_a_reference_starts_a_job_on_it_that_completes(server: Server) -> None:
    with server.client() as client:
        response = client.post("/chat", json={"messages": _turn(), "reference": REFERENCE, "max_attempts": 1})
        assert response.status_code == 202, response.text
        job = response.json()["job"]
        assert f"Started job {job['id']}" in response.json()["reply"]
        assert job["model"] == REFERENCE, job
        events = follow_job(server, job["id"])
        complete_event(events)
        done = client.get(f"/jobs/{job['id']}").json()
        assert done["status"] in ("succeeded", "best_effort"), done
        assert done["model"] == REFERENCE
        assert done["attempts"], "the job ran no attempt on the reference"


def test_start_false_on_a_reference_answers_the_criteria_and_starts_nothing(server: Server) -> None:
    with server.client() as client:
        before = client.get("/jobs").json()["count"]
        response = client.post("/chat", json={"messages": _turn(), "reference": REFERENCE, "start": False})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["job"] is None
        assert body["goal"]["criteria"]["min_compression"] == pytest.approx(2.0)
        assert "Upload the model" not in body["reply"], "a reference needs no upload"
        assert client.get("/jobs").json()["count"] == before


def test_the_reference_s_shipped_size_makes_an_impossible_goal_a_question(server: Server) -> None:
    """The facts of a reference (its shipped parameter count) reach intake without building it."""
    params = shipped_parameter_count("vla")
    assert params is not None and params > 5_000_000
    with server.client() as client:
        response = client.post(
            "/chat", json={"messages": _turn("under 0.1 MB"), "reference": "vla", "start": False}
        )
        without = client.post("/chat", json={"messages": _turn("under 0.1 MB"), "start": False})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "goal_unclear"
    assert without.status_code == 200, "without the reference's size the same goal is not refused"


def test_both_model_id_and_reference_are_refused_with_a_hint(server: Server, tmp_path: Path) -> None:
    with server.client() as client:
        model_id = upload_model(client, write_policy_onnx(tmp_path / "policy.onnx")[0])["id"]
        before = client.get("/jobs").json()["count"]
        response = client.post(
            "/chat", json={"messages": _turn(), "model_id": model_id, "reference": REFERENCE}
        )
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["code"] == "validation_error"
        assert "model_id" in error["message"] and "reference" in error["message"]
        assert "/api/v1/references" in error["hint"]
        assert client.get("/jobs").json()["count"] == before


@pytest.mark.parametrize("start", [True, False])
def test_an_unknown_reference_gets_the_same_error_as_post_jobs(server: Server, start: bool) -> None:
    with server.client() as client:
        chat = client.post(
            "/chat", json={"messages": _turn(), "reference": "no-such-reference", "start": start}
        )
        jobs = client.post("/jobs", json={"reference": "no-such-reference", "goal": GOAL})
    assert chat.status_code == jobs.status_code == 404, chat.text
    assert chat.json()["code"] == jobs.json()["code"] == "not_found"
    assert chat.json()["message"] == jobs.json()["message"]
    assert chat.json()["hint"] == jobs.json()["hint"] == f"known: {', '.join(REFERENCE_MODELS)}"
