"""Helpers for technique tests: put a reference model in a version store and load versions back."""

from __future__ import annotations

from pathlib import Path

import torch

from tools.intake import LoadedModel
from tools.reference import reference_model_file
from tools.techniques import load_version, run_outputs, store_original
from tools.versions import VersionManifest, VersionStore


def store_reference(
    store: VersionStore, name: str, reference_cache: Path, data_dir: Path, job_id: str | None = None
) -> VersionManifest:
    """Build (or find) reference `name` and store it as the first version of job `job_id` (default: name)."""
    path, options = reference_model_file(name, reference_cache)
    return store_original(store, job_id or name, path, options, data_dir)


def load(store: VersionStore, version: VersionManifest, data_dir: Path) -> LoadedModel:
    """Load a stored version back (checksum verified)."""
    return load_version(store, version.job_id, version.id, data_dir)


def outputs(model: LoadedModel, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """All output tensors of one forward pass."""
    return run_outputs(model, inputs)
