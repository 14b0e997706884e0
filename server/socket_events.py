"""A job's events over Socket.io at `/socket.io`, for the web page (python-socketio's ASGI app under FastAPI).

A client connects (with `auth={"token": KEY}` or `Authorization: Bearer KEY` when the service has a key) and
emits `subscribe` `{job_id, after_seq}`; the ack answers `{job_id, after_seq}` or `{error: {code, message,
hint}}`. The socket then joins the job's room `job:<id>` and receives the job's events after `after_seq` as
`optimization:<type>` (progress, status, attempt, checkpoint, error, complete), each carrying the same JSON and
`seq` as the SSE and WebSocket streams: the same `EventBus.follow` feeds all three, history first, then live,
without duplicates or gaps, until the job's last event (the closing checkpoint comes after `complete`); then
`stream:end` `{job_id, last_seq}` says nothing more follows on this subscription. Each subscription is its own stream addressed to its
socket, because every client resumes from its own seq; a shared room broadcast could not honour that.
`unsubscribe` `{job_id}` or a disconnect stops only that client's streams, never the job.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import socketio
from fastapi import FastAPI
from starlette.requests import HTTPConnection

from server.deps import AppServices, check_api_key, check_open_bind
from server.errors import InsecureBindError, UnauthorizedError
from server.event_stream import Keepalive
from tools.errors import NotFoundError, RoboptError, ValidationError
from tools.log import get_logger

_log = get_logger("socket")
EVENT_PREFIX = "optimization:"
STREAM_END = "stream:end"


def room(job_id: str) -> str:
    """The Socket.io room of a job's followers."""
    return f"job:{job_id}"


def _check_token(services: AppServices, connection: HTTPConnection, auth: Any) -> None:
    """The key from the handshake's `auth={"token": ...}`, else the Authorization header (or `?token=`)."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is None or services.settings.api_key is None:
        check_api_key(services.settings, connection)
        return
    expected = services.settings.api_key.get_secret_value()
    if not isinstance(token, str) or not secrets.compare_digest(token.encode(), expected.encode()):
        raise UnauthorizedError(
            "missing or wrong API key", hint='connect with auth={"token": ROBOPT_API_KEY}'
        )


def _subscription(data: Any) -> tuple[str, int]:
    """`{job_id, after_seq}` from a `subscribe` message, validated."""
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str) or not data["job_id"]:
        raise ValidationError(
            "subscribe needs a job id", hint='emit "subscribe" with {"job_id": "...", "after_seq": 0}'
        )
    after = data.get("after_seq", 0)
    if after is None:
        after = 0
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValidationError(
            f"after_seq must be an event sequence number (0 or more), got {after!r}",
            hint="send the seq of the last event received, or 0 for every event",
        )
    return data["job_id"], after


class JobEventsNamespace(socketio.AsyncNamespace):
    """The default namespace: key check on connect, `subscribe` / `unsubscribe` per job."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__("/")
        self._app = app
        self._streams: dict[str, dict[str, asyncio.Task[None]]] = {}

    @property
    def _services(self) -> AppServices:
        return self._app.state.services

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse a connection without the service's key, or on an open address of a keyless service."""
        connection = HTTPConnection(environ["asgi.scope"])
        try:
            check_open_bind(self._services.settings, connection)
            _check_token(self._services, connection, auth)
        except (UnauthorizedError, InsecureBindError) as error:
            raise socketio.exceptions.ConnectionRefusedError(error.message, error.to_dict()) from None
        self._streams[sid] = {}

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        """A client that left stops its own streams; the jobs go on."""
        for task in self._streams.pop(sid, {}).values():
            task.cancel()

    async def on_subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Start (or restart from a new seq) this socket's stream of the job's events."""
        try:
            job_id, after = _subscription(data)
            await asyncio.to_thread(self._services.jobs.job, job_id)  # unknown job: an error, not silence
        except (ValidationError, NotFoundError) as error:
            return {"error": error.to_dict()}
        streams = self._streams.setdefault(sid, {})
        previous = streams.pop(job_id, None)
        if previous is not None:
            previous.cancel()
        await self.enter_room(sid, room(job_id))
        streams[job_id] = asyncio.create_task(self._send_events(sid, job_id, after))
        return {"job_id": job_id, "after_seq": after}

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        """Stop this socket's stream of the job."""
        job_id = data.get("job_id") if isinstance(data, dict) else None
        task = self._streams.get(sid, {}).pop(job_id, None) if isinstance(job_id, str) else None
        if task is not None:
            task.cancel()
            await self.leave_room(sid, room(job_id))
        return {"job_id": job_id, "unsubscribed": task is not None}

    async def _send_events(self, sid: str, job_id: str, after: int) -> None:
        """Emit every event of the job after `after` to this socket, then leave the job's room."""
        services = self._services
        stream = services.bus.follow(
            services.jobs.history, job_id, after, is_active=services.scheduler.is_active
        )
        last = after
        try:
            async for event in stream:
                if not isinstance(event, Keepalive):  # Socket.io pings on its own
                    await self.emit(EVENT_PREFIX + event["type"], event, to=sid)
                    last = event["seq"]
            await self.emit(STREAM_END, {"job_id": job_id, "last_seq": last}, to=sid)
        except RoboptError as error:
            _log.warning(
                "socket stream failed", extra={"component": "socket", "job_id": job_id, "code": error.code}
            )
        finally:
            await stream.aclose()
            if self._streams.get(sid, {}).get(job_id) is asyncio.current_task():
                del self._streams[sid][job_id]
                await self.leave_room(sid, room(job_id))


def socket_app(app: FastAPI) -> socketio.ASGIApp:
    """The Socket.io ASGI app for `app` (mounted at /socket.io); its handlers use `app`'s services."""
    server = socketio.AsyncServer(async_mode="asgi")
    server.register_namespace(JobEventsNamespace(app))
    app.state.socketio = server
    return socketio.ASGIApp(server, socketio_path=None)
