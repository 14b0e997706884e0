"""The checkpointer: SQLite (async) at `<data>/checkpoints.db` by default, Postgres when a URL is configured.

Deserialization is strict: only the state's own types (`graph.state.STATE_TYPES`) are revived from a
checkpoint; anything else in the database is refused.

Writes to SQLite retry a locked database. Several jobs share `checkpoints.db`, each on its own connection; a
job whose event loop is busy between its INSERT and its COMMIT holds the write lock, and another job's write
can wait past the busy timeout ("database is locked", seen twice with two jobs on a loaded 2-core machine), which
failed that job. `RetryingSqliteSaver` rolls the failed write's transaction back and retries it with backoff,
for up to `WRITE_RETRY_S`; a write cancelled before its COMMIT is rolled back too, so a cancelled job cannot keep
the write lock (in CI every job after a cancelled one failed "database is locked" for minutes).

Closing drains first (`RetryingSqliteSaver.drain`): a cancelled job's last write (LangGraph stores the cancelled
node's error from a background task) can still be in flight when the job's connection closes. Closed between its
INSERT and its COMMIT, the connection became a zombie (SQLite defers closing while the write's statement lives) that
kept the write lock, and every later job's writes failed "database is locked" (CI, twice). Now a closing saver
refuses new writes, waits for those in flight, and rolls back before the connection closes.

PostgreSQL (`checkpoint_url`; the `postgres` extra): each `open_checkpointer` block is one connection of LangGraph's
`AsyncPostgresSaver` (autocommit, so a job cancelled mid-write leaves no transaction behind). Its `setup()` (the
saver's own migrations) runs under a PostgreSQL advisory lock, polled, so jobs or replicas opening their first
checkpointer at the same time neither race each other's `CREATE TABLE` / `INSERT INTO checkpoint_migrations` nor
deadlock on its `CREATE INDEX CONCURRENTLY` (`_setup_postgres_saver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from graph.database_url import checkpoint_dsn
from graph.state import STATE_TYPES
from tools.errors import ConfigurationError, MissingDependencyError, ResourceError, RoboptError
from tools.log import get_logger

CHECKPOINT_FILE = "checkpoints.db"
BUSY_TIMEOUT_S = 30.0
WRITE_RETRY_S = 120.0
# pg_advisory_lock key every robopt process takes around the Postgres saver's setup (any constant bigint)
POSTGRES_SETUP_LOCK = 0x726F626F7074
POSTGRES_SETUP_WAIT_S = 120.0
log = get_logger("checkpoint")
T = TypeVar("T")


def _locked(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock (worth retrying)."""
    text = str(error).lower()
    return "locked" in text or "busy" in text


class CheckpointerClosedError(RoboptError):
    """A checkpoint write arrived after its job's checkpointer began to close."""

    code = "checkpointer_closed"


class RetryingSqliteSaver(AsyncSqliteSaver):
    """LangGraph's SQLite saver whose writes roll back and retry while the database is locked, and which drains
    its writes before its connection closes."""

    retry_s: float = WRITE_RETRY_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Refuse new writes, wait (up to `timeout_s`, default `retry_s` + the busy timeout) for the writes in
        flight, then roll back whatever transaction is still open, so closing the connection frees the lock.
        """
        self._closing = True
        try:
            await asyncio.wait_for(
                self._idle.wait(), timeout_s if timeout_s is not None else self.retry_s + 60
            )
        except asyncio.TimeoutError:
            log.warning("checkpoint writes still in flight at close", extra={"writes": self._in_flight})
        with contextlib.suppress(ValueError, sqlite3.ProgrammingError):  # already closed: nothing to free
            await self._rollback()

    async def _retrying(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run `write`; on a locked database roll the connection back and retry with backoff until `retry_s`."""
        if self._closing:
            raise CheckpointerClosedError(
                f"checkpoint {what} refused: the job's checkpointer is closing",
                hint="the job ended (cancelled or finished) while this write was pending; nothing was stored",
            )
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._write_with_retries(what, write)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _write_with_retries(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """`_retrying`'s loop: one write, retried while SQLite answers 'locked'."""
        deadline, delay, tries = time.monotonic() + self.retry_s, 0.05, 1
        while True:
            try:
                return await write()
            except asyncio.CancelledError:
                # a write cancelled between its INSERT and its COMMIT (a cancelled job) leaves its transaction
                # open, and SQLite's write lock with it, failing every other job's writes for as long as this
                # connection lives: roll it back (queued after the INSERT, shielded from a second cancel)
                await asyncio.shield(self._rollback())
                raise
            except sqlite3.OperationalError as error:
                if not _locked(error) or time.monotonic() + delay > deadline:
                    raise
                async with self.lock:
                    await self.conn.rollback()  # drop the failed write's transaction and its stale snapshot
                log.warning(
                    "checkpoint write retried", extra={"write": what, "try": tries, "error": str(error)}
                )
                await asyncio.sleep(delay)
                delay, tries = min(delay * 2, 2.0), tries + 1

    async def _rollback(self) -> None:
        """Roll back whatever transaction this connection has open."""
        async with self.lock:
            await self.conn.rollback()

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint, retrying while the database is locked."""
        parent = super()
        return await self._retrying(
            "checkpoint", lambda: parent.aput(config, checkpoint, metadata, new_versions)
        )

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        """Store a task's pending writes, retrying while the database is locked."""
        parent = super()
        await self._retrying("writes", lambda: parent.aput_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints and writes, retrying while the database is locked."""
        parent = super()
        await self._retrying("delete", lambda: parent.adelete_thread(thread_id))


def state_serializer() -> JsonPlusSerializer:
    """A serializer that revives only the state's types (and LangGraph's built-in safe types)."""
    allowed = [(cls.__module__, cls.__name__) for cls in STATE_TYPES]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


async def _setup_postgres_saver(saver: Any) -> None:
    """Create or migrate the saver's tables, one connection at a time (a session advisory lock).

    The lock is polled (`pg_try_advisory_lock`), never waited for inside a statement: a migration runs
    `CREATE INDEX CONCURRENTLY`, which waits for every open transaction, and a `pg_advisory_lock` call blocked
    on the holder is one, so the two deadlocked (seen with six jobs opening at once on a fresh database).
    """
    deadline = time.monotonic() + POSTGRES_SETUP_WAIT_S
    while True:
        cursor = await saver.conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (POSTGRES_SETUP_LOCK,))
        if (await cursor.fetchone())["taken"]:
            break
        if time.monotonic() > deadline:
            raise ResourceError(
                f"the checkpoint tables' setup waited {POSTGRES_SETUP_WAIT_S:.0f} s for another robopt process",
                hint="a robopt process may be stuck migrating the checkpoint tables: check pg_locks on the "
                "checkpoint database, or retry",
            )
        await asyncio.sleep(0.05)
    try:
        await saver.setup()
    finally:
        await saver.conn.execute("SELECT pg_advisory_unlock(%s)", (POSTGRES_SETUP_LOCK,))


@asynccontextmanager
async def _open_postgres_checkpointer(url: str) -> AsyncIterator[BaseCheckpointSaver]:
    """LangGraph's Postgres saver on one connection to `url` (any PostgreSQL URL form), its tables set up."""
    dsn = checkpoint_dsn(url)
    try:
        import psycopg
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError:
        raise MissingDependencyError(
            "a PostgreSQL checkpoint URL is configured but langgraph-checkpoint-postgres is not installed",
            hint="pip install 'robopt[postgres]' (psycopg and langgraph-checkpoint-postgres), "
            "or unset ROBOPT_CHECKPOINT_URL",
        ) from None
    async with contextlib.AsyncExitStack() as stack:
        try:
            saver = await stack.enter_async_context(
                AsyncPostgresSaver.from_conn_string(dsn, serde=state_serializer())
            )
        except psycopg.OperationalError as error:
            raise ConfigurationError(
                f"cannot connect to the checkpoint database: {str(error).strip().splitlines()[0]}",
                hint="check ROBOPT_CHECKPOINT_URL (host, port, user, password, database) and that PostgreSQL "
                "is running",
            ) from None
        await _setup_postgres_saver(saver)
        log.info("postgres checkpointer opened")
        yield saver


@asynccontextmanager
async def open_checkpointer(
    data_dir: Path, url: str | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S
) -> AsyncIterator[BaseCheckpointSaver]:
    """Open the job checkpointer for the duration of the block: PostgreSQL when `url` is set, else SQLite in
    `data_dir` (which waits `busy_timeout_s` for a lock, then its writes retry; see `RetryingSqliteSaver`)."""
    if url:
        async with _open_postgres_checkpointer(url) as saver:
            yield saver
        return
    import aiosqlite

    path = Path(data_dir) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        saver = RetryingSqliteSaver(conn, serde=state_serializer())
        await saver.setup()
        try:
            yield saver
        finally:
            await asyncio.shield(saver.drain())  # before aiosqlite closes the connection
