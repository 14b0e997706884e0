"""The HTTP service: `uvicorn server.main:app` or `robopt serve`: /api/v1, and Socket.io at /socket.io.

`create_app(settings)` builds an app whose services (history DB, checkpointer, job queue, model registry) are
created by its lifespan, one instance per app, never at import. Start-up warms the fork server that runs
model work in child processes, then resumes the jobs a previous run left running or queued.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from server.deps import AppServices, check_open_bind, is_loopback, require_api_key
from server.errors import InsecureBindError, http_status
from server.schemas import error_responses
from server.settings import Settings, get_settings
from tools.errors import RoboptError
from tools.log import configure_logging, get_logger

_log = get_logger("server")
API_PREFIX = "/api/v1"
SOCKETIO_PATH = "/socket.io"


def build_services(settings: Settings) -> AppServices:
    """The app's services, wired: events go to the history DB first, then to live followers."""
    from agents.llm import build_reasoner
    from server.event_stream import EventBus
    from server.jobs import JobService
    from server.model_registry import ModelRegistry
    from server.scheduler import JobScheduler

    bus = EventBus()
    jobs = JobService(settings, build_reasoner(settings.reasoner), subscribers=[bus.publish])
    return AppServices(
        settings=settings,
        jobs=jobs,
        scheduler=JobScheduler(jobs, settings),
        bus=bus,
        models=ModelRegistry(jobs.history.engine, jobs.data_dir, settings),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the services, warm the fork server, resume unfinished jobs; on shutdown stop the workers."""
    from tools import isolation

    settings: Settings = app.state.settings or get_settings()
    configure_logging(settings.log_level)
    # Each running attempt holds a worker thread while it waits on its child process; history writes and
    # uploads need threads too, so the pool grows with the job slots instead of starving at the default size.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=2 * settings.max_concurrent_jobs + 16, thread_name_prefix="robopt-io")
    )
    # No temporary file outside the data directory: the fork server's pymp-* socket folder, the crash-dump
    # files and the children's scratch go to <data>/work/tmp (a killed server left them in /tmp, issue 16).
    with isolation.scratch_dir(settings.data_dir):
        services = build_services(settings)
        app.state.services = services
        orphans = await asyncio.to_thread(services.models.purge_orphans)  # what a crash mid-upload left
        if orphans:
            _log.warning(
                "removed unfinished uploads",
                extra={"component": "server", "paths": [str(p) for p in orphans]},
            )
        warm_s = await asyncio.to_thread(isolation.prestart)
        resumed = await services.scheduler.start()
        _log.info(
            "service started",
            extra={
                "component": "server",
                "data_dir": str(services.jobs.data_dir),
                "fork_server_s": round(warm_s, 2),
            },
        )
        if resumed:
            _log.warning("resuming unfinished jobs", extra={"component": "server", "jobs": resumed})
        try:
            yield
        finally:
            await services.scheduler.shutdown()
            services.jobs.history.close()


def _error_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    if status == 503:
        headers["Retry-After"] = "30"
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _robopt_error(request: Request, error: RoboptError) -> JSONResponse:
    status = http_status(error)
    if status >= 500:
        _log.error("request failed", extra={"component": "api", "path": request.url.path, "code": error.code})
    return _error_response(status, error.to_dict())


async def _request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()))
    body = {
        "code": "validation_error",
        "message": f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
        "detail": {"errors": [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]},
        "hint": "see the request schema at /docs",
    }
    return _error_response(422, body)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at this request's path (Starlette's own 405 names only the
    methods of the first route whose path matched: GET /jobs and POST /jobs are two routes)."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        error.status_code, "http_error"
    )
    body = {"code": code, "message": str(error.detail), "detail": {}, "hint": "see the API at /docs"}
    headers = dict(error.headers or {})
    if error.status_code == 405:  # RFC 9110: a 405 lists the methods the resource does support
        body["detail"] = {"allowed": allowed_methods(request)}
        headers["Allow"] = ", ".join(body["detail"]["allowed"])
    return _error_response(error.status_code, body, headers)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    _log.exception("unexpected error", extra={"component": "api", "path": request.url.path})
    body = {
        "code": "internal_error",
        "message": "internal error; see the server log",
        "detail": {},
        "hint": None,
    }
    return _error_response(500, body)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app (services are created when it starts, from `settings` or the environment)."""
    from server.routes import chat, datasets, events, jobs, models, page, references, system
    from server.socket_events import socket_app

    app = FastAPI(
        title="robopt",
        summary="Optimize robotics models for edge deployment toward a goal in plain words.",
        version=system.robopt_version(),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
    )
    app.state.settings = settings
    protected = [Depends(require_api_key)]
    # Every route may answer 403 (insecure_bind); every route behind the key 401 as well.
    app.include_router(system.health_router, prefix=API_PREFIX, responses=error_responses(403))
    for module in (models, references, datasets, jobs, events, chat, system):
        app.include_router(
            module.router, prefix=API_PREFIX, dependencies=protected, responses=error_responses(401, 403)
        )
    app.include_router(events.ws_router, prefix=API_PREFIX)  # checks the key itself (browsers: ?token=)
    app.mount(SOCKETIO_PATH, socket_app(app))  # checks the key on connect (auth={"token": KEY})
    app.include_router(page.router)  # the web page at / (its API calls carry the key)
    app.add_exception_handler(RoboptError, _robopt_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

    @app.middleware("http")
    async def refuse_open_bind(request: Request, call_next: Any) -> Any:
        """Serve nothing on a non-loopback address unless an API key is set."""
        services: AppServices | None = getattr(request.app.state, "services", None)
        if services is not None:
            try:
                check_open_bind(services.settings, request)
            except InsecureBindError as error:
                return _error_response(http_status(error), error.to_dict())
        return await call_next(request)

    return app


def check_bind(host: str, settings: Settings) -> None:
    """Refuse to listen beyond this machine without an API key (`robopt serve` calls this before binding)."""
    if settings.api_key is None and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could run code here",
            hint="set ROBOPT_API_KEY (clients send `Authorization: Bearer <key>`), or bind 127.0.0.1",
        )


app = create_app()
"""The app `uvicorn server.main:app` serves (settings from the environment when it starts)."""
