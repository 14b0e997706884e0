"""Checkpoint writes survive a locked database: another connection holding SQLite's write lock past the busy
timeout used to fail the job's write (and the job); the saver now rolls back and retries until the lock is
released, and gives up past its limit with the database unchanged and the connection still usable."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from graph.checkpoint import CHECKPOINT_FILE, CheckpointerClosedError, RetryingSqliteSaver, open_checkpointer

CONFIG = {"configurable": {"thread_id": "job-1", "checkpoint_ns": ""}}


def _hold_write_lock(path: Path, seconds: float, taken: threading.Event) -> threading.Thread:
    """Another connection takes the write lock (BEGIN IMMEDIATE) and commits after `seconds`."""

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO writes (thread_id, checkpoint_id, task_id, idx, channel) VALUES ('x','x','x',0,'x')"
        )
        taken.set()
        threading.Event().wait(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


async def _put(saver: RetryingSqliteSaver) -> str:
    """Store an empty checkpoint; return its id."""
    checkpoint = empty_checkpoint()
    await saver.aput(CONFIG, checkpoint, {"source": "input", "step": -1}, {})
    return checkpoint["id"]


def test_a_write_waits_out_a_lock_held_past_the_busy_timeout_and_later_writes_still_work(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[str, str | None, str]:
        async with open_checkpointer(tmp_path, busy_timeout_s=0.1) as saver:
            assert isinstance(saver, RetryingSqliteSaver)
            taken = threading.Event()
            holder = _hold_write_lock(tmp_path / CHECKPOINT_FILE, 1.0, taken)
            await asyncio.to_thread(taken.wait)
            first = await _put(
                saver
            )  # the busy timeout (0.1 s) runs out several times before the lock is freed
            holder.join()
            stored = await saver.aget_tuple(CONFIG)
            second = await _put(saver)
            return first, stored.checkpoint["id"] if stored else None, second

    first, stored, second = asyncio.run(scenario())
    assert stored == first and second != first
    with sqlite3.connect(tmp_path / CHECKPOINT_FILE) as check:
        assert check.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 2


def test_a_lock_held_past_the_retry_limit_fails_the_write_and_stores_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_checkpointer(tmp_path, busy_timeout_s=0.05) as saver:
            assert isinstance(saver, RetryingSqliteSaver)
            saver.retry_s = 0.3
            taken = threading.Event()
            holder = _hold_write_lock(tmp_path / CHECKPOINT_FILE, 2.0, taken)
            await asyncio.to_thread(taken.wait)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    await _put(saver)
            finally:
                await asyncio.to_thread(holder.join)
            assert await saver.aget_tuple(CONFIG) is None
            await _put(saver)  # once the lock is gone the same connection writes again
            assert await saver.aget_tuple(CONFIG) is not None

    asyncio.run(scenario())


def _can_take_write_lock(path: Path) -> bool:
    """Whether another connection gets the write lock within half a second."""
    other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_a_write_cancelled_before_its_commit_leaves_no_lock_behind(tmp_path: Path) -> None:
    """A cancelled job's checkpoint write: its INSERT waits on another writer's lock, the job is cancelled, then the
    INSERT runs in the job's still-open connection; without a rollback its transaction keeps the write lock.
    """
    path = tmp_path / CHECKPOINT_FILE

    async def scenario() -> bool:
        async with open_checkpointer(tmp_path, busy_timeout_s=5.0) as saver:
            taken = threading.Event()
            holder = _hold_write_lock(path, 0.5, taken)
            await asyncio.to_thread(taken.wait)
            write = asyncio.create_task(_put(saver))  # its INSERT waits in SQLite's busy handler
            await asyncio.sleep(0.2)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            await asyncio.to_thread(holder.join)
            await asyncio.sleep(0.2)  # the INSERT has run by now, in the saver's connection
            free = await asyncio.to_thread(_can_take_write_lock, path)
            assert await saver.aget_tuple(CONFIG) is None, "the cancelled checkpoint is not stored"
            return free

    assert asyncio.run(scenario()), "the cancelled write's transaction still holds SQLite's write lock"


def test_closing_with_a_write_in_flight_leaves_no_lock_behind(tmp_path: Path) -> None:
    """A cancelled job's last write (LangGraph stores the cancelled node's error from a background task) can still
    wait on the lock when the job's checkpointer closes. Closed between that write's INSERT and its COMMIT, the
    connection stayed a zombie holding SQLite's write lock, and every later job failed "database is locked" (CI,
    twice). Closing now waits for the write, so the lock is free once the block has ended."""
    path = tmp_path / CHECKPOINT_FILE
    config = {"configurable": {"thread_id": "job-1", "checkpoint_ns": "", "checkpoint_id": "c1"}}

    async def scenario() -> tuple[bool, BaseException | None]:
        async with open_checkpointer(tmp_path, busy_timeout_s=5.0) as saver:
            taken = threading.Event()
            holder = _hold_write_lock(path, 0.5, taken)
            await asyncio.to_thread(taken.wait)
            write = asyncio.create_task(saver.aput_writes(config, [("error", "cancelled")], "task-1"))
            await asyncio.sleep(0.2)  # its INSERT waits in SQLite's busy handler; the block ends under it
        await asyncio.to_thread(holder.join)
        await asyncio.wait({write}, timeout=5)
        free = await asyncio.to_thread(_can_take_write_lock, path)
        return free, write.exception() if write.done() else None

    free, error = asyncio.run(scenario())
    assert free, "the connection closed with the write's transaction open and still holds the write lock"
    assert error is None, f"the write in flight at close finishes: {error!r}"
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM writes WHERE task_id = 'task-1'").fetchone()[0] == 1


def test_a_write_after_the_checkpointer_began_closing_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_checkpointer(tmp_path) as saver:
            assert isinstance(saver, RetryingSqliteSaver)
            await saver.drain()
            with pytest.raises(CheckpointerClosedError, match="closing"):
                await _put(saver)

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / CHECKPOINT_FILE) as check:
        assert check.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0
    assert _can_take_write_lock(tmp_path / CHECKPOINT_FILE)
