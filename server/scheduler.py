"""The service's job queue: a fixed number of jobs run at once, the rest wait in order; memory admission.

A job is admitted only when the memory it is estimated to need still leaves `min_free_memory_mb` free
(psutil's available memory); otherwise the request answers 503 with the figures, rather than the machine
running out of memory mid-job. On start-up, jobs the history says were running or queued are queued again
and resume from their last checkpoint. Shutting down stops running jobs without marking them: the next start
resumes them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psutil

from agents.intake import ModelFacts
from graph.runner import JobResult
from server.errors import ConflictError, ServiceBusyError
from server.history import TERMINAL_STATUSES
from server.jobs import JobService
from server.settings import Settings
from tools.errors import RoboptError, first_line
from tools.log import get_logger

_log = get_logger("scheduler")
MB = 1024**2
CHILD_BASE_MB = 600.0
"""A torch child process before it loads anything (interpreter, torch, ONNX Runtime): measured 450-550 MB RSS."""
COPIES_OF_MODEL = 4.0
"""Original + candidate + an exported copy + calibration activations, held at once by an attempt's child."""


def estimate_job_mb(model: ModelFacts) -> float:
    """Memory one job's attempt is estimated to need (an estimate, labelled so wherever it is shown)."""
    artifact_mb = (model.artifact_bytes or (model.params or 0) * 4) / MB
    return CHILD_BASE_MB + COPIES_OF_MODEL * artifact_mb


@dataclass
class MemoryFigures:
    """Memory as admission sees it, MB."""

    available_mb: float
    total_mb: float
    process_rss_mb: float


def memory_figures() -> MemoryFigures:
    """This machine's available and total memory and this process's resident memory, measured now."""
    memory = psutil.virtual_memory()
    return MemoryFigures(
        available_mb=memory.available / MB,
        total_mb=memory.total / MB,
        process_rss_mb=psutil.Process().memory_info().rss / MB,
    )


class JobScheduler:
    """Queue jobs, run up to `max_concurrent_jobs` of them, cancel them, and resume unfinished ones."""

    def __init__(self, service: JobService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: list[str] = []
        self._running: dict[str, asyncio.Task[JobResult]] = {}
        self._cancelled: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._estimates: dict[str, float] = {}

    async def start(self) -> list[str]:
        """Start the workers and queue the jobs the history says were running or queued; return their ids."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"robopt-worker-{n}")
            for n in range(self.settings.max_concurrent_jobs)
        ]
        unfinished = await asyncio.to_thread(self.service.history.unfinished_jobs)
        for record in unfinished:
            _log.info("resuming job after restart", extra={"component": "scheduler", "job_id": record.id})
            self._enqueue(record.id)
        return [record.id for record in unfinished]

    async def shutdown(self) -> None:
        """Stop the workers; running jobs stop at once and stay 'running' so the next start resumes them."""
        for task in [*self._running.values(), *self._workers]:
            task.cancel()
        await asyncio.gather(*self._running.values(), *self._workers, return_exceptions=True)
        self._workers.clear()

    def admit(self, model: ModelFacts) -> float:
        """Refuse (503) when the queue is full or the job's estimated memory would leave too little free."""
        if len(self._waiting) >= self.settings.max_queued_jobs:
            raise ServiceBusyError(
                f"the queue is full: {len(self._waiting)} jobs wait for {self.settings.max_concurrent_jobs} slot(s)",
                hint="retry when a job has finished (GET /api/v1/metrics shows the queue), or cancel one",
                detail={"queued": len(self._waiting), "max_queued_jobs": self.settings.max_queued_jobs},
            )
        need = estimate_job_mb(model)
        figures = memory_figures()
        left = figures.available_mb - need
        if left < self.settings.min_free_memory_mb:
            raise ServiceBusyError(
                f"not enough free memory: the job needs about {need:.0f} MB (estimated), {figures.available_mb:.0f} "
                f"MB are available and {self.settings.min_free_memory_mb} MB must stay free",
                hint="retry when running jobs have finished, or free memory on the server",
                detail={
                    "estimated_need_mb": round(need, 1),
                    "available_mb": round(figures.available_mb, 1),
                    "min_free_memory_mb": self.settings.min_free_memory_mb,
                },
            )
        return need

    def submit(self, job_id: str, estimate_mb: float | None = None) -> int:
        """Queue a created job; return its position (0 = next to start)."""
        if estimate_mb is not None:
            self._estimates[job_id] = estimate_mb
        return self._enqueue(job_id)

    def _enqueue(self, job_id: str) -> int:
        self._waiting.append(job_id)
        self._queue.put_nowait(job_id)
        return len(self._waiting) - 1

    def is_active(self, job_id: str) -> bool:
        """Whether the job waits or runs in this process."""
        return job_id in self._running or job_id in self._waiting

    def position(self, job_id: str) -> int | None:
        """The job's place in the queue (0 = next), or None when it is not waiting."""
        return self._waiting.index(job_id) if job_id in self._waiting else None

    def figures(self) -> dict[str, Any]:
        """What the queue holds now, for /metrics."""
        return {
            "queued": len(self._waiting),
            "running": len(self._running),
            "max_concurrent_jobs": self.settings.max_concurrent_jobs,
            "max_queued_jobs": self.settings.max_queued_jobs,
            "reserved_mb_estimated": round(sum(self._estimates.get(j, 0.0) for j in self._running), 1),
        }

    async def cancel(self, job_id: str) -> str:
        """Cancel a waiting or running job (its child is killed); return the status it ends with."""
        record = await asyncio.to_thread(self.service.history.get_job, job_id)
        if record.status in TERMINAL_STATUSES or record.status == "needs_input":
            raise ConflictError(
                f"job {job_id} already ended ({record.status})",
                hint="only queued or running jobs can be cancelled",
            )
        self._cancelled.add(job_id)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return "cancelled"
        if job_id in self._waiting:
            self._waiting.remove(job_id)
        await self._mark_cancelled(job_id)
        return "cancelled"

    async def _mark_cancelled(self, job_id: str) -> None:
        """Record the cancellation and end the job's event streams."""
        await asyncio.to_thread(self.service.history.set_status, job_id, "cancelled")
        await self.service.runner.publish(job_id, "complete", {"status": "cancelled"})
        _log.info("job cancelled", extra={"component": "scheduler", "job_id": job_id})

    async def _work(self) -> None:
        """One worker: take the next waiting job and drive it to its end."""
        while True:
            job_id = await self._queue.get()
            if job_id not in self._waiting:
                continue  # cancelled while it waited
            self._waiting.remove(job_id)
            task = asyncio.create_task(self.service.drive(job_id), name=f"robopt-job-{job_id}")
            self._running[job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if job_id in self._cancelled:
                    await self._mark_cancelled(job_id)
                    continue
                task.cancel()  # shutdown: stop the job, leave it 'running' for the next start
                await asyncio.gather(task, return_exceptions=True)
                raise
            except RoboptError as error:
                await self._fail(job_id, error.to_dict())
            except Exception as exc:  # noqa: BLE001 - one job's bug must not stop the worker
                _log.exception("job crashed", extra={"component": "scheduler", "job_id": job_id})
                await self._fail(job_id, {"code": "internal_error", "message": first_line(exc), "hint": None})
            finally:
                self._running.pop(job_id, None)
                self._estimates.pop(job_id, None)

    async def _fail(self, job_id: str, error: dict[str, Any]) -> None:
        """A job that could not even start: record it failed and end its streams."""
        await self.service.runner.publish(job_id, "error", {**error, "terminal": True})
        await asyncio.to_thread(self.service.history.set_status, job_id, "failed", error=error.get("message"))
