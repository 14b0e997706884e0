"""The optimization history database: jobs, their attempts and every event, in SQLModel tables.

One subscriber of the runner's event fan-out writes here; the CLI (`robopt jobs`, `robopt history`) and the
HTTP service read from it (SSE replays a job's events by seq; on restart, jobs left running are resumed).
SQLite by default (`<data>/optimization_history.db`, WAL, busy timeout, so the CLI and a server can both
write), any SQLAlchemy URL otherwise: PostgreSQL through psycopg 3 (the `postgres` extra), where a bare
`postgresql://` URL, the form the checkpointer takes, is read as `postgresql+psycopg://`. Methods are synchronous:
async callers use `asyncio.to_thread`.
"""

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from sqlalchemy import JSON, Column, UniqueConstraint, event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine, delete, func, select

from graph.database_url import history_sqlalchemy_url
from tools.errors import ConfigurationError, MissingDependencyError, NotFoundError, ValidationError
from tools.log import get_logger

log = get_logger("history")

JOB_STATUSES = ("queued", "running", "succeeded", "best_effort", "failed", "cancelled", "needs_input")
TERMINAL_STATUSES = frozenset({"succeeded", "best_effort", "failed", "cancelled"})
UNFINISHED_STATUSES = ("running", "queued")
ATTEMPT_STATUSES = ("accepted", "rejected", "failed", "baseline")
HISTORY_FILE = "optimization_history.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
WRITE_RETRIES = 20
JOBS_HINT = "run `robopt jobs` (or GET /jobs) to see the jobs that exist"


def utcnow() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(timezone.utc)


def to_utc(value: datetime | str | float | int) -> datetime:
    """Normalize a datetime, ISO string or epoch seconds to tz-aware UTC (naive values are taken as UTC)."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"time {value!r} is not an ISO 8601 datetime") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def json_safe(value: Any) -> Any:
    """Convert pydantic models, datetimes, paths and enums to plain JSON values (unknown objects to str)."""
    return to_jsonable_python(value, fallback=str)


class UTCDateTime(sa.types.TypeDecorator):
    """A DateTime stored as UTC and always returned tz-aware, whatever the backend keeps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        """Store in UTC (naive values are taken as UTC)."""
        return None if value is None else to_utc(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        """Return tz-aware UTC, even from SQLite, which keeps no offset."""
        return None if value is None else to_utc(value)


class JobRecord(SQLModel, table=True):
    """One optimization job: what was asked, where it stands, and what the runner needs to resume it."""

    __tablename__ = "jobs"

    id: str = Field(primary_key=True)
    goal: str
    model: str = Field(description="The model's path or reference name.")
    target: str | None = None
    reasoner: str = "rules"
    status: str = Field(default="queued", index=True)
    created: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished: datetime | None = Field(default=None, sa_type=UTCDateTime)
    parent_job_id: str | None = None
    fork_checkpoint_id: str | None = None
    goal_met: bool | None = None
    best_version: str | None = None
    report_path: str | None = None
    error: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts_count: int = 0


class AttemptRecordRow(SQLModel, table=True):
    """One attempt of a job: a technique with its params, the verdict, and the measurement it got."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_attempts_job_index"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True)
    index: int
    technique: str = ""
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str
    reason: str = ""
    version_id: str | None = None
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    started: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_s: float | None = None


class EventRecord(SQLModel, table=True):
    """One event of a job, numbered by `seq` (1, 2, ...) within the job: what SSE replays and resumes from."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_events_job_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    seq: int
    type: str
    time: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

    def as_event(self) -> dict[str, Any]:
        """Render in the runner's event schema (type, job_id, seq, time, data), JSON-ready."""
        return self.model_dump(mode="json", exclude={"id"})


JOB_FIELDS = frozenset(JobRecord.model_fields) - {"id"}
ATTEMPT_FIELDS = frozenset(AttemptRecordRow.model_fields) - {"id", "job_id"}


def _as_mapping(value: Mapping[str, Any] | BaseModel | Any) -> dict[str, Any]:
    """Read a dict, a pydantic model or a plain object's attributes as a dict (top level kept as is)."""
    if isinstance(value, BaseModel):
        return {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return dict(value)
    return {key: item for key, item in vars(value).items() if not key.startswith("_")}


def _check_status(status: str | None, allowed: Iterable[str], what: str) -> str:
    """Refuse a status value outside `allowed`, naming the values that are."""
    allowed = tuple(allowed)
    if status not in allowed:
        raise ValidationError(f"unknown {what} status {status!r}", hint=f"use one of: {', '.join(allowed)}")
    return status


class HistoryDB:
    """Jobs, attempts and events on one SQLAlchemy engine; safe to share between threads and processes."""

    def __init__(self, url: str) -> None:
        """Open (and create the tables of) the database at `url`."""
        self.url = history_sqlalchemy_url(url)
        self.engine = self._make_engine(self.url)
        try:
            SQLModel.metadata.create_all(
                self.engine, tables=[JobRecord.__table__, AttemptRecordRow.__table__, EventRecord.__table__]
            )
        except OperationalError as error:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"cannot open the history database {where}: {str(error.orig).strip().splitlines()[0]}",
                hint="check ROBOPT_HISTORY_URL (host, port, user, password, database) and that the server runs",
            ) from None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "HistoryDB":
        """Open `<data_dir>/optimization_history.db`, creating the directory when needed."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(data_dir / HISTORY_FILE).resolve()}")

    @classmethod
    def open(cls, url: str | None, data_dir: Path) -> "HistoryDB":
        """The configured history: `url` when set (ROBOPT_HISTORY_URL), else SQLite in the data dir."""
        return cls(url) if url else cls.for_data_dir(data_dir)

    @staticmethod
    def _make_engine(url: str) -> sa.Engine:
        """Build the engine; SQLite gets WAL, a busy timeout and connections usable from any thread."""
        parsed = sa.engine.make_url(url)
        if not parsed.drivername.startswith("sqlite"):
            try:
                return create_engine(url, pool_pre_ping=True)
            except ModuleNotFoundError as error:
                raise MissingDependencyError(
                    f"the history URL's driver {parsed.drivername!r} is not installed ({error.name})",
                    hint="for PostgreSQL: pip install 'robopt[postgres]' and use postgresql://... or "
                    "postgresql+psycopg://...",
                ) from None
        memory = parsed.database in (None, "", ":memory:")  # one shared connection, else each has its own DB
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            poolclass=StaticPool if memory else sa.pool.QueuePool,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        return engine

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> "HistoryDB":
        """Use as a context manager that closes the engine on exit."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the engine."""
        self.close()

    def _session(self) -> Session:
        """A session whose objects stay readable after commit (callers get detached, loaded rows)."""
        return Session(self.engine, expire_on_commit=False)

    @staticmethod
    def _job_in(session: Session, job_id: str) -> JobRecord:
        """The job `job_id` in `session`, or NotFoundError."""
        job = session.get(JobRecord, job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found", hint=JOBS_HINT, detail={"job_id": job_id})
        return job

    def create_job(
        self,
        goal: str,
        model: str,
        *,
        job_id: str | None = None,
        target: str | None = None,
        reasoner: str = "rules",
        status: str = "queued",
        parent_job_id: str | None = None,
        fork_checkpoint_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """Record a new job (id generated unless given) and return it; a duplicate id is refused."""
        job = JobRecord(
            id=job_id or uuid.uuid4().hex[:12],
            goal=goal,
            model=str(model),
            target=target,
            reasoner=reasoner,
            status=_check_status(status, JOB_STATUSES, "job"),
            parent_job_id=parent_job_id,
            fork_checkpoint_id=fork_checkpoint_id,
            options=json_safe(dict(options or {})),
        )
        job.updated = job.created
        try:
            with self._session() as session:
                session.add(job)
                session.commit()
        except IntegrityError:
            raise ValidationError(
                f"job {job.id!r} already exists", hint="choose another id, or omit it to get a fresh one"
            ) from None
        log.info("job created", extra={"job_id": job.id})
        return job

    def get_job(self, job_id: str) -> JobRecord:
        """The job `job_id`; NotFoundError (with how to list jobs) when there is none."""
        with self._session() as session:
            return self._job_in(session, job_id)

    def list_jobs(
        self, status: str | Iterable[str] | None = None, limit: int | None = 100
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with the given status (or statuses)."""
        query = select(JobRecord).order_by(JobRecord.created.desc(), JobRecord.id.desc())
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for value in wanted:
                _check_status(value, JOB_STATUSES, "job")
            query = query.where(JobRecord.status.in_(wanted))
        if limit is not None:
            if limit < 1:
                raise ValidationError(f"limit must be at least 1, got {limit}")
            query = query.limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        """Set the given fields of a job and bump `updated`; a terminal status also stamps `finished`."""
        unknown = sorted(set(fields) - JOB_FIELDS)
        if unknown:
            raise ValidationError(
                f"unknown job field(s): {', '.join(unknown)}", hint=f"fields: {', '.join(sorted(JOB_FIELDS))}"
            )
        if "status" in fields:
            _check_status(fields["status"], JOB_STATUSES, "job")
        for name in ("created", "updated", "finished"):
            if fields.get(name) is not None:
                fields[name] = to_utc(fields[name])
        if "options" in fields:
            fields["options"] = json_safe(dict(fields["options"] or {}))
        with self._session() as session:
            job = self._job_in(session, job_id)
            now = utcnow()
            if "status" in fields and "finished" not in fields:
                terminal = fields["status"] in TERMINAL_STATUSES
                fields["finished"] = (job.finished or now) if terminal else None
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated = fields.get("updated") or now
            session.add(job)
            session.commit()
            return job

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        goal_met: bool | None = None,
        best_version: str | None = None,
        report_path: str | None = None,
    ) -> JobRecord:
        """Move a job to `status` (validated), setting only the outcome fields that are given."""
        _check_status(status, JOB_STATUSES, "job")
        given = dict(error=error, goal_met=goal_met, best_version=best_version, report_path=report_path)
        fields = {name: value for name, value in given.items() if value is not None}
        job = self.update_job(job_id, status=status, **fields)
        log.info(f"job {status}", extra={"job_id": job_id})
        return job

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs left running or queued (oldest first), for a restarted server to resume."""
        query = select(JobRecord).where(JobRecord.status.in_(UNFINISHED_STATUSES))
        with self._session() as session:
            return list(session.exec(query.order_by(JobRecord.created, JobRecord.id)).all())

    def delete_job(self, job_id: str) -> None:
        """Remove a job with its attempts and events, in one transaction."""
        with self._session() as session:
            job = self._job_in(session, job_id)
            session.exec(delete(AttemptRecordRow).where(AttemptRecordRow.job_id == job_id))
            session.exec(delete(EventRecord).where(EventRecord.job_id == job_id))
            session.delete(job)
            session.commit()

    def counts_by_status(self) -> dict[str, int]:
        """How many jobs have each status (every known status listed, zero included)."""
        query = select(JobRecord.status, func.count()).group_by(JobRecord.status)
        counts = dict.fromkeys(JOB_STATUSES, 0)
        with self._session() as session:
            counts.update({status: count for status, count in session.exec(query).all()})
        return counts

    def attempts_total(self) -> int:
        """How many attempts every job made together."""
        with self._session() as session:
            return int(session.exec(select(func.count()).select_from(AttemptRecordRow)).one())

    @staticmethod
    def _attempt_fields(attempt: Mapping[str, Any] | BaseModel, index: int | None) -> dict[str, Any]:
        """The attempt's known fields, JSON-safe and validated (`measurement` and `version` read as aliases)."""
        raw = _as_mapping(attempt)
        if "metrics" not in raw and "measurement" in raw:
            raw["metrics"] = raw["measurement"]
        version = raw.get("version")
        if "version_id" not in raw and version is not None:
            raw["version_id"] = (
                version if isinstance(version, str) else _as_mapping(version).get("version_id")
            )
        if index is not None:
            raw["index"] = index
        fields = {name: raw[name] for name in ATTEMPT_FIELDS if name in raw}
        if not isinstance(fields.get("index"), int):
            raise ValidationError("the attempt has no integer index", hint="pass index=N or include it")
        _check_status(fields.get("status"), ATTEMPT_STATUSES, "attempt")
        if "params" in fields:
            fields["params"] = json_safe(fields["params"] or {})
        if fields.get("metrics") is not None:
            fields["metrics"] = json_safe(fields["metrics"])
        for name in ("started", "finished"):
            if fields.get(name) is not None:
                fields[name] = to_utc(fields[name])
        if fields.get("duration_s") is None and fields.get("started") and fields.get("finished"):
            fields["duration_s"] = (fields["finished"] - fields["started"]).total_seconds()
        return fields

    def record_attempt(
        self, job_id: str, attempt: Mapping[str, Any] | BaseModel, *, index: int | None = None
    ) -> AttemptRecordRow:
        """Insert or update the attempt (job_id, index): recording it again, after a resume, updates the row."""
        fields = self._attempt_fields(attempt, index)
        for _ in range(WRITE_RETRIES):
            try:
                with self._session() as session:
                    job = self._job_in(session, job_id)
                    where = (AttemptRecordRow.job_id == job_id) & (AttemptRecordRow.index == fields["index"])
                    row = session.exec(select(AttemptRecordRow).where(where)).first()
                    if row is None:
                        row = AttemptRecordRow(job_id=job_id, **fields)
                    else:
                        for name, value in fields.items():
                            setattr(row, name, value)
                    session.add(row)
                    session.flush()
                    count = select(func.count()).where(AttemptRecordRow.job_id == job_id)
                    job.attempts_count = session.exec(count).one()
                    job.updated = utcnow()
                    session.add(job)
                    session.commit()
                    return row
            except IntegrityError:
                continue  # another writer inserted the same index first: update its row instead
        raise ValidationError(
            f"could not record attempt {fields['index']} of job {job_id!r}: write conflicts"
        )

    def attempts(self, job_id: str) -> list[AttemptRecordRow]:
        """The job's attempts ordered by index."""
        query = select(AttemptRecordRow).where(AttemptRecordRow.job_id == job_id)
        with self._session() as session:
            return list(session.exec(query.order_by(AttemptRecordRow.index)).all())

    def append_event(
        self, job_id: str, type: str, data: Mapping[str, Any] | BaseModel | None = None, time: Any = None
    ) -> int:
        """Store an event under the job's next seq and return that seq (atomic across threads and processes)."""
        table = EventRecord.__table__
        values = {
            "job_id": job_id,
            "type": type,
            "time": to_utc(time) if time is not None else utcnow(),
            "data": json_safe(data) if data is not None else {},
        }
        next_seq = (
            select(func.coalesce(func.max(table.c.seq), 0) + 1)
            .where(table.c.job_id == job_id)
            .scalar_subquery()
        )
        # One INSERT ... SELECT: SQLite takes the write lock before reading max(seq); other backends may
        # race, and the unique (job_id, seq) turns the loser's insert into an IntegrityError that we retry.
        statement = table.insert().values(**values, seq=next_seq).returning(table.c.seq)
        for _ in range(WRITE_RETRIES):
            try:
                with self.engine.begin() as connection:
                    return int(connection.execute(statement).scalar_one())
            except IntegrityError:
                continue
        raise ValidationError(f"could not append an event to job {job_id!r}: write conflicts")

    def record_event(self, event: Mapping[str, Any] | BaseModel) -> int:
        """Store an event that carries its own seq (idempotent on (job_id, seq)); one without a seq is appended."""
        raw = _as_mapping(event)
        if not raw.get("job_id") or not raw.get("type"):
            raise ValidationError(
                "an event needs a job_id and a type", hint="events carry type, job_id, seq, time, data"
            )
        if raw.get("seq") is None:
            return self.append_event(raw["job_id"], raw["type"], raw.get("data"), raw.get("time"))
        row = EventRecord(
            job_id=raw["job_id"],
            seq=int(raw["seq"]),
            type=str(raw["type"]),
            time=to_utc(raw["time"]) if raw.get("time") is not None else utcnow(),
            data=json_safe(raw.get("data") or {}),
        )
        try:
            with self._session() as session:
                session.add(row)
                session.commit()
        except IntegrityError:
            pass  # already stored (a replay after resume, or a second subscriber): keep the first copy
        return row.seq

    def events(self, job_id: str, after_seq: int = 0, limit: int | None = None) -> list[EventRecord]:
        """The job's events with seq above `after_seq` (an SSE Last-Event-ID), ordered by seq."""
        query = select(EventRecord).where(EventRecord.job_id == job_id, EventRecord.seq > after_seq)
        query = query.order_by(EventRecord.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return list(session.exec(query).all())

    def last_seq(self, job_id: str) -> int:
        """The highest seq stored for the job, 0 when it has no event."""
        query = select(func.max(EventRecord.seq)).where(EventRecord.job_id == job_id)
        with self._session() as session:
            return int(session.exec(query).one() or 0)
