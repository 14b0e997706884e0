"""/health (no auth) and /metrics: jobs by status, attempts, memory measured now, the queue."""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from server.deps import AppServices, ServicesDep
from server.scheduler import memory_figures
from server.schemas import HealthPublic, MetricsPublic, error_responses

health_router = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])


def robopt_version() -> str:
    """The installed package's version."""
    try:
        return version("robopt")
    except PackageNotFoundError:
        return "0+unknown"


@health_router.get("/health", response_model=HealthPublic)
async def health(services: ServicesDep) -> HealthPublic:
    """The service is up (needs no API key)."""
    return HealthPublic(status="ok", version=robopt_version(), uptime_s=time.monotonic() - services.started)


async def collect_metrics(services: AppServices) -> MetricsPublic:
    """Measure the service's figures now."""
    history = services.jobs.history
    counts = await asyncio.to_thread(history.counts_by_status)
    attempts = await asyncio.to_thread(history.attempts_total)
    memory = memory_figures()
    return MetricsPublic(
        jobs=counts,
        attempts=attempts,
        memory={
            "available_mb": round(memory.available_mb, 1),
            "total_mb": round(memory.total_mb, 1),
            "process_rss_mb": round(memory.process_rss_mb, 1),
        },
        queue=services.scheduler.figures(),
    )


@router.get(
    "/metrics",
    response_model=MetricsPublic,
    responses={
        200: {"content": {"text/plain": {}}, "description": "JSON, or Prometheus text with ?format="},
        **error_responses(422),
    },
)
async def metrics(
    services: ServicesDep, format: Literal["json", "prometheus"] = "json"
) -> MetricsPublic | PlainTextResponse:
    """The service's figures as JSON, or in Prometheus' text format with `?format=prometheus`."""
    figures = await collect_metrics(services)
    if format == "json":
        return figures
    lines = [f'robopt_jobs{{status="{name}"}} {count}' for name, count in figures.jobs.items()]
    lines.append(f"robopt_attempts_total {figures.attempts}")
    lines += [f"robopt_memory_{name} {value}" for name, value in figures.memory.items()]
    lines += [
        f"robopt_queue_{name} {value}"
        for name, value in figures.queue.items()
        if isinstance(value, (int, float))
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
