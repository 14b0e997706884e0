"""A job's checkpoints as the API lists them: none yet is an empty list (a queued or just-started job), not the
404 the page showed at the start of every job; a job that does not exist is still not found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.llm import build_reasoner
from server.jobs import JobService
from server.settings import Settings
from tools.errors import NotFoundError


def test_a_job_without_a_checkpoint_yet_lists_none_and_an_unknown_job_is_not_found(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    service = JobService(settings, build_reasoner(settings.reasoner))
    record = service.history.create_job("at least 2x smaller", "policy.onnx")
    assert asyncio.run(service.checkpoints(record.id)) == []
    with pytest.raises(NotFoundError):
        asyncio.run(service.checkpoints("job-0000000000"))
