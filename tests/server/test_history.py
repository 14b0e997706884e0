"""The history DB against real SQLite files and a real PostgreSQL: jobs, attempts, events, concurrency, persistence,
time zones (the `db` and `history_url` fixtures run each test on both backends)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from server.history import HISTORY_FILE, HistoryDB
from tests.postgres_support import PostgresServer, connect
from tools.errors import NotFoundError, ValidationError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def history_url(request: pytest.FixtureRequest, data_dir: Path) -> str:
    """The URL of an empty history: a SQLite file in the data directory, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{data_dir / HISTORY_FILE}"


@pytest.fixture
def db(history_url: str) -> Iterator[HistoryDB]:
    """A history DB on each backend, closed afterwards."""
    with HistoryDB(history_url) as history:
        yield history


def test_for_data_dir_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    with HistoryDB.for_data_dir(tmp_path / "new" / "data") as history:
        assert (tmp_path / "new" / "data" / HISTORY_FILE).is_file()
        with history.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_create_get_and_list_newest_first(db: HistoryDB) -> None:
    first = db.create_job("under 2 GB", "models/act.pt", target="jetson-orin-nx", options={"budget": 5})
    second = db.create_job("under 100 ms", "reference:vla", job_id="job-b", reasoner="openai")
    third = db.create_job("smaller", "models/dp.onnx")
    got = db.get_job(first.id)
    assert (got.goal, got.model, got.target, got.options) == (
        "under 2 GB",
        "models/act.pt",
        "jetson-orin-nx",
        {"budget": 5},
    )
    assert got.status == "queued" and got.attempts_count == 0 and got.finished is None
    assert db.get_job("job-b").reasoner == "openai"
    assert [job.id for job in db.list_jobs()] == [third.id, second.id, first.id]
    assert [job.id for job in db.list_jobs(limit=2)] == [third.id, second.id]
    db.set_status(second.id, "running")
    assert [job.id for job in db.list_jobs(status="running")] == [second.id]
    assert {job.id for job in db.list_jobs(status=["running", "queued"])} == {first.id, second.id, third.id}


def test_duplicate_job_id_is_refused(db: HistoryDB) -> None:
    db.create_job("g", "m", job_id="same")
    with pytest.raises(ValidationError, match="already exists"):
        db.create_job("g2", "m2", job_id="same")
    assert db.get_job("same").goal == "g"


def test_unknown_job_raises_not_found_with_a_hint(db: HistoryDB) -> None:
    for call in (
        lambda: db.get_job("nope"),
        lambda: db.update_job("nope", goal="x"),
        lambda: db.set_status("nope", "running"),
        lambda: db.delete_job("nope"),
        lambda: db.record_attempt("nope", {"index": 0, "status": "baseline"}),
    ):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert "robopt jobs" in caught.value.hint


def test_status_values_and_fields_are_validated(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    with pytest.raises(ValidationError, match="unknown job status 'done'"):
        db.set_status(job.id, "done")
    with pytest.raises(ValidationError, match="unknown job status"):
        db.create_job("g", "m", status="finished")
    with pytest.raises(ValidationError, match="unknown job field"):
        db.update_job(job.id, colour="red")
    with pytest.raises(ValidationError):
        db.list_jobs(status="nope")
    assert db.get_job(job.id).status == "queued"


def test_update_job_sets_fields_and_bumps_updated(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    updated = db.update_job(job.id, best_version="v3", options={"data_dir": Path("/tmp/x")})
    again = db.get_job(job.id)
    assert again.best_version == "v3" and again.options == {"data_dir": "/tmp/x"}
    assert updated.updated > job.updated and again.updated == updated.updated


def test_terminal_status_sets_finished_and_outcome(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    running = db.set_status(job.id, "running")
    assert running.finished is None
    waiting = db.set_status(job.id, "needs_input")
    assert waiting.finished is None
    done = db.set_status(job.id, "best_effort", goal_met=False, best_version="v2", report_path="r.md")
    stored = db.get_job(job.id)
    assert stored.finished is not None and stored.finished == done.finished
    assert (stored.status, stored.goal_met, stored.best_version, stored.report_path) == (
        "best_effort",
        False,
        "v2",
        "r.md",
    )
    failed = db.create_job("g", "m")
    stored = db.set_status(failed.id, "failed", error="export failed")
    assert stored.error == "export failed" and stored.finished is not None
    resumed = db.set_status(failed.id, "running")
    assert resumed.finished is None and resumed.error == "export failed"


class Attempt(BaseModel):
    """A stand-in for the graph's attempt model."""

    index: int
    technique: str
    params: dict
    status: str
    reason: str = ""
    measurement: dict | None = None
    started: datetime | None = None
    finished: datetime | None = None


def test_attempts_upsert_by_index(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    db.record_attempt(
        job.id, {"index": 1, "technique": "ort_int8", "status": "failed", "reason": "first try"}
    )
    db.record_attempt(
        job.id, {"index": 0, "technique": "baseline", "status": "baseline", "metrics": {"size_mb": 40}}
    )
    row = db.record_attempt(
        job.id,
        Attempt(
            index=1,
            technique="ort_int8",
            params={"per_channel": True, "when": start},
            status="accepted",
            reason="smaller and as accurate",
            measurement={"size_mb": 10.5},
            started=start,
            finished=start + timedelta(seconds=12),
        ),
    )
    rows = db.attempts(job.id)
    assert [attempt.index for attempt in rows] == [0, 1]
    assert (
        rows[1].id == row.id and rows[1].status == "accepted" and rows[1].reason == "smaller and as accurate"
    )
    assert rows[1].params == {"per_channel": True, "when": "2025-01-02T03:04:05Z"}
    assert rows[1].metrics == {"size_mb": 10.5} and rows[1].duration_s == 12.0
    assert rows[0].metrics == {"size_mb": 40} and rows[0].params == {}
    assert db.get_job(job.id).attempts_count == 2
    with pytest.raises(ValidationError, match="unknown attempt status"):
        db.record_attempt(job.id, {"index": 2, "status": "maybe"})
    with pytest.raises(ValidationError, match="index"):
        db.record_attempt(job.id, {"status": "accepted"})
    assert len(db.attempts(job.id)) == 2


def test_append_event_numbers_each_job_independently(db: HistoryDB) -> None:
    a, b = db.create_job("g", "m"), db.create_job("g", "m")
    seqs_a = [db.append_event(a.id, "progress", {"percent": p}) for p in (0, 25, 50)]
    seqs_b = [db.append_event(b.id, "status", {"status": "running"}) for _ in range(2)]
    seqs_a.append(db.append_event(a.id, "progress", {"percent": 75}))
    assert seqs_a == [1, 2, 3, 4] and seqs_b == [1, 2]
    assert (db.last_seq(a.id), db.last_seq(b.id), db.last_seq("none")) == (4, 2, 0)
    assert [event.data["percent"] for event in db.events(a.id)] == [0, 25, 50, 75]


def test_events_after_seq_resume_where_a_client_left(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    for step in range(1, 8):
        db.append_event(job.id, "progress", {"step": step})
    assert [event.seq for event in db.events(job.id, after_seq=4)] == [5, 6, 7]
    assert [event.seq for event in db.events(job.id, after_seq=2, limit=2)] == [3, 4]
    assert db.events(job.id, after_seq=7) == []
    event = db.events(job.id, after_seq=6)[0].as_event()
    assert event["type"] == "progress" and event["job_id"] == job.id and event["seq"] == 7
    assert event["data"] == {"step": 7} and datetime.fromisoformat(event["time"]).tzinfo is not None


def test_record_event_is_idempotent_on_job_and_seq(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    event = {"type": "attempt", "job_id": job.id, "seq": 1, "time": "2025-05-01T10:00:00Z", "data": {"i": 1}}
    assert db.record_event(event) == 1
    assert db.record_event({**event, "data": {"i": "again"}}) == 1
    assert db.record_event({"type": "status", "job_id": job.id, "data": {}}) == 2
    stored = db.events(job.id)
    assert [(e.seq, e.data) for e in stored] == [(1, {"i": 1}), (2, {})]
    assert stored[0].time == datetime(2025, 5, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(ValidationError):
        db.record_event({"job_id": job.id, "seq": 3})


def test_two_threads_appending_get_distinct_consecutive_seqs(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    seqs: list[list[int]] = [[], []]

    def append_many(slot: int) -> None:
        for i in range(200):
            seqs[slot].append(db.append_event(job.id, "progress", {"writer": slot, "i": i}))

    threads = [threading.Thread(target=append_many, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seqs[0] + seqs[1]) == list(range(1, 401))
    assert seqs[0] == sorted(seqs[0]) and seqs[1] == sorted(seqs[1])
    assert [event.seq for event in db.events(job.id)] == list(range(1, 401))


APPENDER = """
import sys
from server.history import HistoryDB
db = HistoryDB(sys.argv[1])
for i in range(int(sys.argv[3])):
    db.append_event(sys.argv[2], "progress", {"pid_i": i})
"""


def test_two_processes_appending_get_distinct_consecutive_seqs(db: HistoryDB, history_url: str) -> None:
    job = db.create_job("g", "m")
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, history_url, job.id, "100"], cwd=REPO)
        for _ in range(2)
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    assert [event.seq for event in db.events(job.id)] == list(range(1, 201))


def test_two_instances_on_one_database_see_each_others_writes(history_url: str) -> None:
    with HistoryDB(history_url) as cli, HistoryDB(history_url) as server:
        job = cli.create_job("g", "m")
        server.set_status(job.id, "running")
        assert cli.get_job(job.id).status == "running"
        assert server.append_event(job.id, "status", {}) == 1
        assert cli.append_event(job.id, "progress", {}) == 2
        assert [event.type for event in server.events(job.id)] == ["status", "progress"]
        cli.record_attempt(job.id, {"index": 0, "status": "baseline"})
        assert len(server.attempts(job.id)) == 1


def test_delete_job_removes_attempts_and_events(db: HistoryDB) -> None:
    doomed, kept = db.create_job("g", "m"), db.create_job("g", "m")
    for job in (doomed, kept):
        db.record_attempt(job.id, {"index": 0, "status": "baseline"})
        db.append_event(job.id, "status", {})
    db.delete_job(doomed.id)
    with pytest.raises(NotFoundError):
        db.get_job(doomed.id)
    assert db.attempts(doomed.id) == [] and db.events(doomed.id) == [] and db.last_seq(doomed.id) == 0
    assert len(db.attempts(kept.id)) == 1 and len(db.events(kept.id)) == 1
    with db.engine.connect() as connection:
        for table in ("attempts", "events"):
            count = connection.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": doomed.id}
            )
            assert count.scalar() == 0


def test_unfinished_jobs_and_counts_by_status(db: HistoryDB) -> None:
    queued, running, done, waiting = (db.create_job("g", "m") for _ in range(4))
    db.set_status(running.id, "running")
    db.set_status(done.id, "succeeded", goal_met=True)
    db.set_status(waiting.id, "needs_input")
    assert {job.id for job in db.unfinished_jobs()} == {queued.id, running.id}
    counts = db.counts_by_status()
    assert counts["queued"] == counts["running"] == counts["succeeded"] == counts["needs_input"] == 1
    assert counts["failed"] == 0 and sum(counts.values()) == 4


def test_data_survives_closing_and_reopening(history_url: str) -> None:
    with HistoryDB(history_url) as history:
        job = history.create_job("g", "m", options={"budget": {"attempts": 8}})
        history.record_attempt(job.id, {"index": 0, "status": "baseline", "metrics": {"latency_ms": 9.5}})
        history.append_event(job.id, "progress", {"percent": 50})
        history.set_status(job.id, "failed", error="boom")
    with HistoryDB(history_url) as reopened:
        stored = reopened.get_job(job.id)
        assert (stored.status, stored.error, stored.options) == (
            "failed",
            "boom",
            {"budget": {"attempts": 8}},
        )
        assert stored.attempts_count == 1 and reopened.attempts(job.id)[0].metrics == {"latency_ms": 9.5}
        assert reopened.events(job.id)[0].data == {"percent": 50}
        assert reopened.append_event(job.id, "completion", {}) == 2


def test_datetimes_come_back_tz_aware_utc(db: HistoryDB) -> None:
    job = db.create_job("g", "m")
    plus_two = timezone(timedelta(hours=2))
    db.record_attempt(
        job.id,
        {
            "index": 0,
            "status": "baseline",
            "started": datetime(2025, 6, 1, 12, 0, tzinfo=plus_two),
            "finished": datetime(2025, 6, 1, 10, 0, 30),
        },
    )
    db.append_event(job.id, "status", {}, time=datetime(2025, 6, 1, 9, 0))
    db.set_status(job.id, "cancelled")
    stored, attempt, event = db.get_job(job.id), db.attempts(job.id)[0], db.events(job.id)[0]
    for value in (
        stored.created,
        stored.updated,
        stored.finished,
        attempt.started,
        attempt.finished,
        event.time,
    ):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert attempt.started == datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc)
    assert attempt.duration_s == 30.0
    assert event.time == datetime(2025, 6, 1, 9, 0, tzinfo=timezone.utc)
    assert stored.created <= stored.updated <= stored.finished <= datetime.now(timezone.utc)


def test_postgres_url_forms_name_one_database_whose_rows_psycopg_reads(
    postgres_url: str, data_dir: Path
) -> None:
    driver_url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    short_url = postgres_url.replace("postgresql://", "postgres://", 1)
    with HistoryDB(postgres_url) as bare, HistoryDB(driver_url) as driver, HistoryDB(short_url) as short:
        assert bare.engine.url.drivername == driver.engine.url.drivername == "postgresql+psycopg"
        job = bare.create_job("under 2 GB", "models/act.pt", options={"budget": 5})
        driver.record_attempt(job.id, {"index": 0, "status": "baseline", "metrics": {"latency_ms": 9.5}})
        assert short.append_event(job.id, "status", {"state": "running"}) == 1
    with connect(postgres_url) as connection:
        row = connection.execute(
            "SELECT goal, options, attempts_count FROM jobs WHERE id = %s", (job.id,)
        ).fetchone()
        assert row == ("under 2 GB", {"budget": 5}, 1)
        metrics = connection.execute("SELECT metrics FROM attempts WHERE job_id = %s", (job.id,)).fetchone()
        assert metrics == ({"latency_ms": 9.5},)
        events = connection.execute("SELECT seq, type FROM events WHERE job_id = %s", (job.id,)).fetchall()
        assert events == [(1, "status")]
    assert list(data_dir.iterdir()) == []  # nothing fell back to SQLite


def test_unreachable_postgres_is_a_configuration_error_with_a_hint(postgres_server: "PostgresServer") -> None:
    from tools.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot open the history database") as caught:
        HistoryDB(postgres_server.url("no_such_database"))
    assert "ROBOPT_HISTORY_URL" in caught.value.hint
