"""/jobs: start (202), list, inspect, cancel; checkpoints and replay; the report; version downloads."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Annotated, Literal, Sequence

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from agents.intake import GoalSpec, ModelFacts
from server.deps import AppServices, ServicesDep
from server.errors import ConflictError
from server.history import JobRecord
from server.jobs import ModelSource
from server.schemas import (
    AttemptPublic,
    CancelPublic,
    CheckpointPublic,
    CheckpointsPublic,
    JobAccepted,
    JobCreate,
    JobLinks,
    JobPublic,
    JobsPublic,
    JobStatus,
    ReplayCreate,
    error_responses,
)
from tools.errors import NotFoundError, RoboptError, ValidationError
from tools.log import get_logger

router = APIRouter(prefix="/jobs", tags=["jobs"])
_log = get_logger("api")
DOWNLOADS = "downloads"


def job_public(services: AppServices, record: JobRecord, attempts: list | None = None) -> JobPublic:
    """A job record as the API shows it, with its queue position and links."""
    base = f"/api/v1/jobs/{record.id}"
    return JobPublic(
        **record.model_dump(
            include={
                "id",
                "goal",
                "model",
                "target",
                "reasoner",
                "status",
                "created",
                "updated",
                "finished",
                "parent_job_id",
                "fork_checkpoint_id",
                "goal_met",
                "best_version",
                "error",
                "attempts_count",
            }
        ),
        queue_position=services.scheduler.position(record.id),
        attempts=[AttemptPublic.model_validate(a, from_attributes=True) for a in attempts or []],
        links=JobLinks(
            events=f"{base}/events",
            websocket=f"{base}/ws",
            report=f"{base}/report",
            checkpoints=f"{base}/checkpoints",
        ),
    )


async def model_source(services: AppServices, model_id: str | None, reference: str | None) -> ModelSource:
    """The model a job optimizes: an uploaded one, or a bundled reference model (built on first use)."""
    if (model_id is None) == (reference is None):
        raise ValidationError(
            "give exactly one of model_id and reference",
            hint="upload a model with POST /api/v1/models and pass its id, or name a reference model",
        )
    if model_id is not None:
        record = await asyncio.to_thread(services.models.get, model_id)
        options = services.models.load_options(record)
        return ModelSource(path=Path(record.path), options=options, label=record.name)
    from tools.reference import reference_entry, reference_model_file

    assert reference is not None  # exactly one of the two, checked above
    reference_entry(reference)  # an unknown name is refused before anything is built
    path, options = await asyncio.to_thread(reference_model_file, reference, services.settings.reference_dir)
    return ModelSource(path=path, options=options, label=reference, reference=reference)


def artifact_bytes(path: Path) -> int:
    """Bytes of a model file, or of every file in a model directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def dataset_path(services: AppServices, dataset_id: str | None) -> Path | None:
    """The stored file of an uploaded dataset."""
    if dataset_id is None:
        return None
    from server.routes.datasets import dataset_file

    return dataset_file(services.settings.data_dir, dataset_id)


async def start_job(services: AppServices, body: JobCreate, history: Sequence[str] = ()) -> JobAccepted:
    """Admit, create (the model becomes version 1), read the goal, and queue the job."""
    source = await model_source(services, body.model_id, body.reference)
    data = dataset_path(services, body.dataset_id)
    size = await asyncio.to_thread(artifact_bytes, source.path)
    estimate = services.scheduler.admit(ModelFacts(name=source.label, artifact_bytes=size))
    record = await asyncio.to_thread(
        services.jobs.create_job,
        source,
        body.goal,
        simulator=body.simulator,
        data_path=data,
        target=body.target,
        max_attempts=body.max_attempts,
        time_budget_s=body.time_budget_s,
        episodes=body.episodes,
        goal_history=history,
        stop_at_first=body.stop_at_first,
    )
    try:
        goal = await services.jobs.check_goal(record.id)
    except RoboptError:
        await asyncio.to_thread(services.jobs.discard, record.id)  # nothing is left of a job that never ran
        raise
    services.scheduler.submit(record.id, estimate)
    _log.info("job queued", extra={"component": "api", "job_id": record.id})
    return JobAccepted(job=job_public(services, record), goal=goal, estimated_memory_mb=round(estimate, 1))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=error_responses(400, 404, 409, 422, 503),
)
async def create_job(body: JobCreate, services: ServicesDep) -> JobAccepted:
    """Start an optimization; 422 with the question when the goal needs an answer, 503 when busy."""
    return await start_job(services, body)


@router.get("", response_model=JobsPublic, responses=error_responses(422))
async def list_jobs(
    services: ServicesDep,
    status_filter: Annotated[
        JobStatus | None, Query(alias="status", description="Only jobs in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobsPublic:
    """Jobs, newest first."""
    records = await asyncio.to_thread(services.jobs.history.list_jobs, status_filter, limit)
    return JobsPublic(data=[job_public(services, r) for r in records], count=len(records))


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404, 422))
async def get_job(job_id: str, services: ServicesDep) -> JobPublic:
    """A job with its attempts."""
    record = await asyncio.to_thread(services.jobs.job, job_id)
    attempts = await asyncio.to_thread(services.jobs.attempts, job_id)
    return job_public(services, record, attempts)


@router.post("/{job_id}/cancel", response_model=CancelPublic, responses=error_responses(404, 409, 422))
async def cancel_job(job_id: str, services: ServicesDep) -> CancelPublic:
    """Cancel a queued or running job (its child process is killed); 409 when it already ended."""
    return CancelPublic(id=job_id, status=await services.scheduler.cancel(job_id))


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic, responses=error_responses(404, 422))
async def list_checkpoints(job_id: str, services: ServicesDep) -> CheckpointsPublic:
    """Every checkpoint of the job, oldest first: the points replay can start from."""
    infos = await services.jobs.checkpoints(job_id)
    data = [CheckpointPublic(**info.__dict__) for info in infos]
    return CheckpointsPublic(data=data, count=len(data))


@router.post(
    "/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=error_responses(400, 404, 409, 422, 503),
)
async def replay_job(job_id: str, body: ReplayCreate, services: ServicesDep) -> JobAccepted:
    """Replay the job from a checkpoint as a new job linked to it, optionally with a changed goal."""
    record = await asyncio.to_thread(services.jobs.job, job_id)
    await services.jobs.runner.state(job_id, body.checkpoint_id)  # 404 for a checkpoint it does not have
    goal: GoalSpec | None = None
    if body.goal is not None:
        goal = await services.jobs.check_goal(job_id, body.goal)
    facts = ModelFacts.model_validate(record.options.get("job", {}).get("model", {}))
    estimate = services.scheduler.admit(facts)
    fork = await asyncio.to_thread(services.jobs.create_fork, job_id, body.checkpoint_id, body.goal)
    services.scheduler.submit(fork.id, estimate)
    return JobAccepted(job=job_public(services, fork), goal=goal, estimated_memory_mb=round(estimate, 1))


@router.get(
    "/{job_id}/report",
    response_model=None,
    responses={
        200: {"content": {"application/json": {}, "text/markdown": {}}},
        **error_responses(404, 409, 422),
    },
)
async def get_report(
    job_id: str, services: ServicesDep, format: Literal["json", "md"] = "json"
) -> JSONResponse | PlainTextResponse:
    """The before/after report: JSON, or markdown with `?format=md`; 409 until the job has one."""
    record = await asyncio.to_thread(services.jobs.job, job_id)
    if not record.report_path:
        raise ConflictError(
            f"job {job_id} has no report yet ({record.status})",
            hint="the report is written when the job ends; follow GET /jobs/{id}/events",
        )
    path = Path(record.report_path)
    if format == "md":
        path = path.with_name("report.md")
    if not path.is_file():
        raise NotFoundError(f"the report file of job {job_id} is gone: {path.name}")
    text = await asyncio.to_thread(path.read_text)
    if format == "md":
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
    return JSONResponse(content=json.loads(text))


@router.get(
    "/{job_id}/artifacts/{version_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/zip": {}}},
        **error_responses(404, 409, 422),
    },
)
async def download_artifact(
    job_id: str, version_id: str, request: Request, services: ServicesDep
) -> FileResponse:
    """Download a version's artifact (a directory comes as a .zip); the sha256 is in X-Robopt-Sha256."""
    await asyncio.to_thread(services.jobs.job, job_id)
    ref = await asyncio.to_thread(services.jobs.store.ref, job_id, version_id)
    headers = {"X-Robopt-Sha256": ref.sha256, "X-Robopt-Format": ref.format}
    path = Path(ref.path)
    if path.is_file():
        return FileResponse(path, filename=f"{job_id}-{version_id}-{path.name}", headers=headers)
    archive = await asyncio.to_thread(
        _zip_directory, path, services.settings.data_dir, job_id, version_id, ref.sha256
    )
    return FileResponse(archive, filename=archive.name, media_type="application/zip", headers=headers)


def _zip_directory(directory: Path, data_dir: Path, job_id: str, version_id: str, sha256: str) -> Path:
    """Zip a directory artifact once (versions are immutable, so the zip is cached by the version's hash)."""
    folder = Path(data_dir).resolve() / DOWNLOADS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{job_id}-{version_id}-{sha256[:12]}.zip"
    if not target.is_file():
        partial = folder / f".{target.stem}.partial"
        made = shutil.make_archive(str(partial), "zip", root_dir=directory)
        Path(made).replace(target)  # atomic: a download never sees a half-written zip
    return target
