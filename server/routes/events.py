"""A job's events: Server-Sent Events (`Last-Event-ID` resumes) and the same stream over a WebSocket.

Both replay the job's events from the history DB, then follow it live until the job's last event (the closing
checkpoint stored after `complete` or a terminal `error`). A client that leaves stops only its own stream,
never the job.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from server.deps import AppServices, ServicesDep, check_api_key, check_open_bind, get_services
from server.errors import InsecureBindError, UnauthorizedError
from server.event_stream import Keepalive
from server.schemas import error_responses
from tools.errors import NotFoundError, RoboptError, ValidationError

router = APIRouter(prefix="/jobs", tags=["events"])
ws_router = APIRouter(prefix="/jobs", tags=["events"])
POLICY_VIOLATION = 1008


def _start_after(last_event_id: str | None, after: int | None) -> int:
    """Where a stream starts: after `Last-Event-ID` (a reconnect) or `?after=`, else from the first event."""
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id.strip())
        except ValueError:
            raise ValidationError(
                f"Last-Event-ID {last_event_id!r} is not an event sequence number",
                hint="send back the `id:` of the last event received",
            ) from None
    else:
        value = after or 0
    if value < 0:
        raise ValidationError(f"event sequence numbers start at 1, got {value}")
    return value


def _sse(event: dict[str, Any]) -> str:
    """One SSE message: the seq as its id, the type as its event name, the whole event as JSON data."""
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def _follow(services: AppServices, job_id: str, after: int) -> AsyncIterator[dict[str, Any] | Keepalive]:
    """The job's events after `after`, then live ones, until it ends."""
    return services.bus.follow(services.jobs.history, job_id, after, is_active=services.scheduler.is_active)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The job's events as SSE."},
        **error_responses(404, 422),
    },
)
async def stream_events(
    job_id: str,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, description="Start after this seq (Last-Event-ID wins).")
    ] = None,
) -> StreamingResponse:
    """Every event of the job from the start (or after Last-Event-ID), then live, until it ends."""
    await asyncio.to_thread(services.jobs.job, job_id)  # 404 before the stream starts
    start = _start_after(last_event_id, after)
    events = _follow(services, job_id, start)

    async def body() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for event in events:
            yield ": keepalive\n\n" if isinstance(event, Keepalive) else _sse(event)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@ws_router.websocket("/{job_id}/ws")
async def websocket_events(websocket: WebSocket, job_id: str, after: int | None = None) -> None:
    """The job's events as JSON messages (types progress, status, attempt, checkpoint, error, complete)."""
    services = get_services(websocket)
    try:
        check_open_bind(services.settings, websocket)
        check_api_key(services.settings, websocket)
        await asyncio.to_thread(services.jobs.job, job_id)
        start = _start_after(None, after)
    except (UnauthorizedError, NotFoundError, ValidationError, InsecureBindError) as error:
        await websocket.close(code=POLICY_VIOLATION, reason=error.one_line()[:120])
        return
    await websocket.accept()
    sender = asyncio.create_task(_send_events(websocket, services, job_id, start))
    listener = asyncio.create_task(_until_disconnect(websocket))
    await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sender, listener):
        task.cancel()  # a client that left stops its stream only; the job goes on
    await asyncio.gather(sender, listener, return_exceptions=True)


async def _send_events(websocket: WebSocket, services: AppServices, job_id: str, after: int) -> None:
    """Send every event, then close normally once the job has ended."""
    try:
        async for event in _follow(services, job_id, after):
            if isinstance(event, Keepalive):
                await websocket.send_json({"type": "keepalive", "job_id": job_id})
            else:
                await websocket.send_json(event)
        await websocket.close(code=1000)
    except (WebSocketDisconnect, RuntimeError, RoboptError):
        return


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
