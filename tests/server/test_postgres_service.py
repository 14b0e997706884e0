"""`robopt serve` with its history and its checkpoints on one real PostgreSQL: a job runs from upload to its report,
its checkpoints are listed and replayed from, and every row is in PostgreSQL, with no SQLite file in the data dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from server.history import HISTORY_FILE
from tests.postgres_support import PostgresServer, connect
from tests.server.api_support import (
    Server,
    complete_event,
    follow_job,
    server_env,
    start_server,
    upload_model,
    wait_for_status,
    write_policy_onnx,
)

pytestmark = pytest.mark.integration
GOAL = "at least 2x smaller, lose at most 1% accuracy"
CHECKPOINT_FILE = "checkpoints.db"


@pytest.fixture(scope="module")
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """One fresh database for the module's service (the same `postgresql://` URL for both settings)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[tuple[Server, Path]]:
    """`robopt serve` on PostgreSQL; the service and its data dir."""
    root = tmp_path_factory.mktemp("pg-api")
    data_dir = root / "data"
    env = server_env(data_dir, history_url=database_url, checkpoint_url=database_url)
    running = start_server(env, root / "server.log")
    yield running, data_dir
    running.stop()


@pytest.fixture(scope="module")
def model_id(service: tuple[Server, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The WideMLP policy, uploaded once."""
    path, _ = write_policy_onnx(tmp_path_factory.mktemp("policy") / "policy.onnx")
    with service[0].client() as client:
        return str(upload_model(client, path, name="wide-mlp")["id"])


def _run_job(server: Server, client: httpx.Client, model_id: str) -> tuple[str, list[dict[str, Any]]]:
    """Start a job, follow its events to the end; its id and events."""
    answer = client.post("/jobs", json={"model_id": model_id, "goal": GOAL, "max_attempts": 2})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job"]["id"]
    return job_id, follow_job(server, job_id)


def _no_sqlite_in(data_dir: Path) -> None:
    found = [str(path) for path in data_dir.rglob("*") if path.name in (HISTORY_FILE, CHECKPOINT_FILE)]
    assert found == [], f"PostgreSQL was configured, yet SQLite files were made: {found}"


def test_a_job_runs_to_complete_and_its_rows_and_checkpoints_are_in_postgres(
    service: tuple[Server, Path], model_id: str, database_url: str
) -> None:
    server, data_dir = service
    with server.client() as client:
        job_id, events = _run_job(server, client, model_id)
        assert complete_event(events)["data"]["goal_met"] is True, server.log_tail()
        job = wait_for_status(client, job_id, {"succeeded"})
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == sorted(c["step"] for c in checkpoints)
    assert {"intake", "analyze", "finalize"} <= {c["node"] for c in checkpoints}
    with connect(database_url) as connection:
        status, goal, attempts_count = connection.execute(
            "SELECT status, goal, attempts_count FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
        attempts = connection.execute(
            'SELECT "index", technique, status FROM attempts WHERE job_id = %s ORDER BY "index"', (job_id,)
        ).fetchall()
        seqs = [
            row[0]
            for row in connection.execute("SELECT seq FROM events WHERE job_id = %s ORDER BY seq", (job_id,))
        ]
        stored = [
            row[0]
            for row in connection.execute(
                "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''", (job_id,)
            )
        ]
    assert (status, goal) == ("succeeded", GOAL) and attempts_count == len(attempts) == len(job["attempts"])
    assert [(a["technique"], a["status"]) for a in job["attempts"]] == [(t, s) for _, t, s in attempts]
    assert seqs == [event["seq"] for event in events], "every streamed event is a row in PostgreSQL"
    assert sorted(stored) == sorted(c["checkpoint_id"] for c in checkpoints)
    _no_sqlite_in(data_dir)


def test_a_replay_from_a_checkpoint_runs_on_postgres_and_leaves_the_parent_untouched(
    service: tuple[Server, Path], model_id: str, database_url: str
) -> None:
    server, data_dir = service
    with server.client() as client:
        parent, _ = _run_job(server, client, model_id)
        wait_for_status(client, parent, {"succeeded", "best_effort"})
        checkpoints = client.get(f"/jobs/{parent}/checkpoints").json()["data"]
        after_analyze = next(c for c in checkpoints if c["node"] == "analyze")
        answer = client.post(
            f"/jobs/{parent}/replay",
            json={"checkpoint_id": after_analyze["checkpoint_id"], "goal": "3x smaller"},
        )
        assert answer.status_code == 202, answer.text
        child = answer.json()["job"]["id"]
        complete_event(follow_job(server, child))
        finished = wait_for_status(client, child, {"succeeded", "best_effort"})
        child_checkpoints = client.get(f"/jobs/{child}/checkpoints").json()["data"]
        parent_after = client.get(f"/jobs/{parent}/checkpoints").json()["data"]
    assert finished["goal"] == "3x smaller" and finished["parent_job_id"] == parent
    assert "intake" not in {
        c["node"] for c in child_checkpoints
    }, "the replay starts after the parent's analysis"
    assert parent_after == checkpoints, "the parent's checkpoints are untouched"
    with connect(database_url) as connection:
        counts = dict(
            connection.execute(
                "SELECT thread_id, count(*) FROM checkpoints WHERE thread_id IN (%s, %s) GROUP BY thread_id",
                (parent, child),
            ).fetchall()
        )
        linked = connection.execute(
            "SELECT parent_job_id, fork_checkpoint_id FROM jobs WHERE id = %s", (child,)
        ).fetchone()
    assert counts == {parent: len(checkpoints), child: len(child_checkpoints)}
    assert linked == (parent, after_analyze["checkpoint_id"])
    _no_sqlite_in(data_dir)
