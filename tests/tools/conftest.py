"""Fixtures the technique tests share: one torch thread, held-out reaching inputs, a stored reference VLA."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch

from tests.technique_support import held_out_inputs, load, reference_store


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a test module: its models are small, and on a busy 2-core machine thread
    hand-offs cost more than they save and make timings noisy (use with `pytest.mark.usefixtures`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def held_out() -> list[dict[str, torch.Tensor]]:
    """Held-out reaching observations (two batches of 16) no technique sees for training or calibration."""
    return held_out_inputs()


@pytest.fixture(scope="module")
def vla_job(
    tmp_path_factory: pytest.TempPathFactory, reference_cache: Path, held_out: list
) -> SimpleNamespace:
    """The reference VLA stored once per test module (store, data_dir, source, original) with held-out
    reaching inputs (`inputs`)."""
    job = reference_store(tmp_path_factory, reference_cache, "vla_job", "vla")
    job.source = job.versions["vla"]
    job.original = load(job.store, job.source, job.data_dir)
    job.inputs = held_out
    return job
