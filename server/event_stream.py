"""Live job events for SSE and WebSocket clients: the history DB's past, then the runner's present.

The runner hands every event first to the history DB, then to `EventBus.publish`. A follower subscribes to
the bus before it reads the history, so no event falls between the two; events it sees twice are dropped by
seq, and a gap (a listener's queue overflowed, or another process wrote events) is filled from the history.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from graph.events import Event
from server.history import TERMINAL_STATUSES, HistoryDB
from tools.log import get_logger

_log = get_logger("events")
QUEUE_SIZE = 1000
KEEPALIVE_S = 15.0
TRAILING_WAIT_S = 10.0
"""After its terminal event a job still stores its closing checkpoint: a stream waits this long at most for the
job to stop running here, then sends what it stored after the terminal event and ends."""


def is_terminal(event: dict[str, Any]) -> bool:
    """Whether the event ends its job's stream: `complete`, or an `error` the job did not survive."""
    return event["type"] == "complete" or (event["type"] == "error" and bool(event["data"].get("terminal")))


@dataclass
class Keepalive:
    """Nothing happened for a while: SSE sends a comment, WebSocket a ping, so proxies keep the connection."""


class EventBus:
    """In-process fan-out of job events to every listener of the job (bounded queues; gaps refilled)."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def publish(self, event: Event) -> None:
        """Hand the event to the job's listeners; a full queue drops it (the follower refills from history)."""
        listeners = self._listeners.get(event.job_id)
        if not listeners:
            return
        payload = event.model_dump(mode="json")
        for queue in listeners:
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                _log.warning("listener queue full", extra={"component": "events", "job_id": event.job_id})

    def listeners(self, job_id: str) -> int:
        """How many clients follow the job now."""
        return len(self._listeners.get(job_id, ()))

    def _subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._listeners[job_id].add(queue)
        return queue

    def _unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        listeners = self._listeners.get(job_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[job_id]

    async def follow(
        self,
        history: HistoryDB,
        job_id: str,
        after: int = 0,
        *,
        is_active: Callable[[str], bool],
        keepalive_s: float = KEEPALIVE_S,
    ) -> AsyncIterator[dict[str, Any] | Keepalive]:
        """Yield the job's events with seq above `after`, in order, then live ones until the job ends.

        The stream ends after the job's last event: past a terminal event it sends what the job stores after it
        (the closing checkpoint), once the job stopped running here (`is_active`; waited for at most
        `TRAILING_WAIT_S`). It also ends once the job is neither running here nor unfinished in the history and
        every stored event was sent. Leaving the loop never touches the job.
        """
        queue = self._subscribe(job_id)
        try:
            async with aclosing(
                self._ordered(queue, history, job_id, after, is_active, keepalive_s)
            ) as events:
                async for item in events:
                    yield item
                    if isinstance(item, dict) and is_terminal(item):
                        for trailing in await self._trailing(history, job_id, item["seq"], is_active):
                            yield trailing
                        return
        finally:
            self._unsubscribe(job_id, queue)

    async def _ordered(
        self,
        queue: asyncio.Queue[dict[str, Any]],
        history: HistoryDB,
        job_id: str,
        after: int,
        is_active: Callable[[str], bool],
        keepalive_s: float,
    ) -> AsyncIterator[dict[str, Any] | Keepalive]:
        """The job's events with seq above `after`, in order and each once: the history's, then the queue's live
        ones, a gap filled from the history; a keepalive after `keepalive_s` of silence; ends once the job is
        over and every stored event was sent (the caller stops at a terminal event)."""
        last = after
        for row in await asyncio.to_thread(history.events, job_id, last):
            event = row.as_event()
            yield event
            last = event["seq"]
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
            except TimeoutError:
                missed = await asyncio.to_thread(history.events, job_id, last)
                for row in missed:
                    stored = row.as_event()
                    yield stored
                    last = stored["seq"]
                if not missed:
                    if await self._finished(history, job_id, is_active):
                        return
                    yield Keepalive()
                continue
            if event["seq"] <= last:
                continue
            if event["seq"] > last + 1:
                for row in await asyncio.to_thread(history.events, job_id, last):
                    if row.seq >= event["seq"]:
                        break
                    stored = row.as_event()
                    yield stored
                    last = stored["seq"]
            yield event
            last = event["seq"]

    @staticmethod
    async def _trailing(
        history: HistoryDB, job_id: str, last: int, is_active: Callable[[str], bool]
    ) -> list[dict[str, Any]]:
        """The events the job stored after its terminal one (seq above `last`), read once it stopped running here
        or `TRAILING_WAIT_S` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRAILING_WAIT_S
        while is_active(job_id) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return [row.as_event() for row in await asyncio.to_thread(history.events, job_id, last)]

    @staticmethod
    async def _finished(history: HistoryDB, job_id: str, is_active: Callable[[str], bool]) -> bool:
        """The job is over: not running in this process and its record says it ended."""
        if is_active(job_id):
            return False
        record = await asyncio.to_thread(history.get_job, job_id)
        return record.status in TERMINAL_STATUSES or record.status == "needs_input"
