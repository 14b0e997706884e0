"""The event follower behind SSE and WebSocket: history first, then live, never a duplicate or a gap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from graph.events import Event
from server.event_stream import EventBus, Keepalive
from server.history import HistoryDB


def _store(history: HistoryDB, job_id: str, seq: int, type: str = "status", **data: Any) -> Event:
    event = Event(type=type, job_id=job_id, seq=seq, data=data)
    history.record_event(event.model_dump(mode="json"))
    return event


async def _collect(stream: Any, count: int | None = None) -> list[Any]:
    got = []
    async for item in stream:
        got.append(item)
        if count is not None and len(got) >= count:
            break
    return got


@pytest.fixture
def history(data_dir: Path) -> HistoryDB:
    db = HistoryDB.for_data_dir(data_dir)
    db.create_job("2x faster", "m", job_id="job-a", status="running")
    return db


def test_stored_events_then_live_ones_without_duplicates(history: HistoryDB) -> None:
    async def scenario() -> list[int]:
        bus, running = EventBus(), {"job-a"}
        for seq in (1, 2):
            _store(history, "job-a", seq)
        stream = bus.follow(history, "job-a", 0, is_active=lambda job: job in running, keepalive_s=5)
        first = await _collect(stream, 2)
        for seq in (2, 3):  # 2 again: a live copy of a stored event
            bus.publish(_store(history, "job-a", seq))
        bus.publish(_store(history, "job-a", 4, type="complete", status="goal_met"))
        rest = asyncio.ensure_future(_collect(stream))
        await asyncio.sleep(0.2)
        bus.publish(_store(history, "job-a", 5, type="checkpoint", node="finalize"))  # stored after complete
        running.clear()
        return [e["seq"] for e in first + await asyncio.wait_for(rest, 5)]

    assert asyncio.run(scenario()) == [1, 2, 3, 4, 5]  # the closing checkpoint too: the job's last event


def test_a_job_that_never_stops_running_ends_its_stream_after_the_trailing_wait(
    history: HistoryDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.event_stream as event_stream

    monkeypatch.setattr(event_stream, "TRAILING_WAIT_S", 0.3)
    _store(history, "job-a", 1, type="complete", status="goal_met")

    async def scenario() -> list[int]:
        stream = EventBus().follow(history, "job-a", 0, is_active=lambda _: True, keepalive_s=5)
        return [e["seq"] for e in await asyncio.wait_for(_collect(stream), 5)]

    assert asyncio.run(scenario()) == [1]


def test_a_gap_in_the_live_events_is_filled_from_the_history(history: HistoryDB) -> None:
    async def scenario() -> list[int]:
        bus, running = EventBus(), {"job-a"}
        stream = bus.follow(history, "job-a", 0, is_active=lambda job: job in running, keepalive_s=5)
        task = asyncio.ensure_future(_collect(stream))
        await asyncio.sleep(0.2)
        for seq in (1, 2, 3):
            _store(history, "job-a", seq)  # stored but never reached this listener (a full queue)
        bus.publish(_store(history, "job-a", 4, type="error", terminal=True, message="boom"))
        running.clear()
        return [e["seq"] for e in await asyncio.wait_for(task, 10)]

    assert asyncio.run(scenario()) == [1, 2, 3, 4]


def test_the_stream_ends_for_a_finished_job_and_resumes_after_last_event_id(history: HistoryDB) -> None:
    for seq in range(1, 6):
        _store(history, "job-a", seq)
    history.set_status("job-a", "best_effort")  # ended without a stored complete event (an old crash)

    async def scenario(after: int) -> list[Any]:
        stream = EventBus().follow(history, "job-a", after, is_active=lambda _: False, keepalive_s=0.1)
        return await asyncio.wait_for(_collect(stream), 10)

    assert [e["seq"] for e in asyncio.run(scenario(3))] == [4, 5]
    assert asyncio.run(scenario(5)) == []


def test_a_quiet_running_job_gets_keepalives(history: HistoryDB) -> None:
    async def scenario() -> list[Any]:
        stream = EventBus().follow(history, "job-a", 0, is_active=lambda _: True, keepalive_s=0.05)
        return await asyncio.wait_for(_collect(stream, 2), 10)

    assert all(isinstance(item, Keepalive) for item in asyncio.run(scenario()))


def test_listeners_are_released_when_a_client_leaves(history: HistoryDB) -> None:
    bus = EventBus()

    async def scenario() -> int:
        _store(history, "job-a", 1)
        stream = bus.follow(history, "job-a", 0, is_active=lambda _: True, keepalive_s=5)
        await _collect(stream, 1)
        during = bus.listeners("job-a")
        await stream.aclose()
        return during

    assert asyncio.run(scenario()) == 1
    assert bus.listeners("job-a") == 0
