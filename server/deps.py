"""FastAPI dependencies: the app's services (one instance per app, built at start-up) and the API-key check.

Handlers take `ServicesDep`; nothing is created at import time, so each test app gets its own data dir.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from server.errors import InsecureBindError, UnauthorizedError
from server.event_stream import EventBus
from server.jobs import JobService
from server.model_registry import ModelRegistry
from server.scheduler import JobScheduler
from server.settings import Settings


@dataclass
class AppServices:
    """Everything a request handler needs, created once per app by the lifespan."""

    settings: Settings
    jobs: JobService
    scheduler: JobScheduler
    bus: EventBus
    models: ModelRegistry
    started: float = field(default_factory=time.monotonic)


def get_services(connection: HTTPConnection) -> AppServices:
    """The app's services (set up by the lifespan)."""
    return connection.app.state.services


ServicesDep = Annotated[AppServices, Depends(get_services)]


def bearer_token(connection: HTTPConnection) -> str | None:
    """The bearer token of a request: the Authorization header, or `?token=` (browsers' WebSockets)."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return connection.query_params.get("token") if connection.scope["type"] == "websocket" else None


def check_api_key(settings: Settings, connection: HTTPConnection) -> None:
    """Refuse a request without the configured API key (no key configured: every request passes)."""
    if settings.api_key is None:
        return
    token = bearer_token(connection)
    expected = settings.api_key.get_secret_value()
    if token is None or not secrets.compare_digest(token.encode(), expected.encode()):
        raise UnauthorizedError(
            "missing or wrong API key" if token else "this server needs an API key",
            hint="send `Authorization: Bearer <ROBOPT_API_KEY>`",
        )


def require_api_key(connection: HTTPConnection, services: ServicesDep) -> None:
    """Router dependency: every route but /health needs the key when one is set."""
    check_api_key(services.settings, connection)


def is_loopback(host: str | None) -> bool:
    """Whether a listening address only accepts connections from this machine."""
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_open_bind(settings: Settings, connection: HTTPConnection) -> None:
    """Refuse to serve a request that reached a non-loopback address of a server without an API key."""
    server = connection.scope.get("server")
    if settings.api_key is None and server and not is_loopback(str(server[0])):
        raise InsecureBindError(
            f"this server listens on {server[0]} without an API key",
            hint="set ROBOPT_API_KEY, or bind 127.0.0.1",
        )
