"""`apply`: the one public verb. Load a stored version, run a technique's handler, store the result.

The handler writes into a private work folder; only a complete artifact is moved into the version store,
so a failing technique leaves no half-written version and no stray files.
"""

from __future__ import annotations

import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.errors import MissingDependencyError, OptimizationError, ResourceError, RoboptError, first_line
from tools.log import get_logger
from tools.techniques.artifacts import load_version
from tools.techniques.base import (
    CalibrationData,
    ProgressCallback,
    TechniqueConfig,
    TechniqueContext,
    TechniqueSpec,
)
from tools.techniques.registry import entry_for_config, unavailable_reason
from tools.versions import VersionManifest, VersionStore

_log = get_logger("techniques")


@dataclass(frozen=True)
class AppliedTechnique:
    """The stored new version and the facts the technique established about it."""

    version: VersionManifest
    facts: dict[str, Any]


class _Progress:
    """Forward progress to the caller, clamped to [0, 100] and never going backwards."""

    def __init__(self, callback: ProgressCallback | None, technique: str, job_id: str) -> None:
        self.callback = callback
        self.last = -1.0
        self.log = get_logger("techniques", job_id=job_id, technique=technique)

    def __call__(self, percent: float, message: str) -> None:
        value = float(min(100.0, max(self.last, percent, 0.0)))
        self.last = value
        self.log.debug("progress %.0f%% %s", value, message)
        if self.callback is not None:
            self.callback(value, message)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a technique gives the same artifact twice."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def apply(
    store: VersionStore,
    job_id: str,
    version_id: str,
    config: TechniqueConfig,
    *,
    data_dir: Path,
    calibration: CalibrationData | None = None,
    progress: ProgressCallback | None = None,
    time_budget_s: float | None = None,
) -> AppliedTechnique:
    """Apply `config`'s technique to version `version_id` of `job_id` and store the result as a new version."""
    entry = entry_for_config(config)
    reason = unavailable_reason(entry)
    if reason is not None:
        raise MissingDependencyError(
            f"{config.type} cannot run here: {reason}", hint=entry.spec.needs.install_hint or None
        )
    _check_input_format(entry.spec, store.get(job_id, version_id).format, version_id)
    report = _Progress(progress, config.type, job_id)
    report(0, f"{config.type}: loading version {version_id}")
    seed_everything(config.seed)
    source = load_version(store, job_id, version_id, data_dir)
    work_dir = Path(data_dir).resolve() / "work" / job_id / f"{config.type}-{uuid.uuid4().hex[:12]}"
    work_dir.mkdir(parents=True)
    try:
        context = TechniqueContext(
            source=source,
            source_version=version_id,
            job_id=job_id,
            work_dir=work_dir,
            data_dir=Path(data_dir),
            calibration=calibration,
            progress=report,
            time_budget_s=time_budget_s,
        )
        try:
            product = entry.handler(context, config)
        except RoboptError:
            raise
        except MemoryError:
            raise ResourceError(
                f"{config.type} ran out of memory on version {version_id}",
                hint="use less calibration data, a smaller batch, or a machine with more memory",
            ) from None
        except Exception as exc:  # noqa: BLE001 - backends raise anything; the caller gets one error type
            _log.exception("technique failed", extra={"job_id": job_id, "technique": config.type})
            raise OptimizationError(
                f"{config.type} failed on version {version_id}: {first_line(exc)}"
            ) from exc
        artifact = Path(product.artifact)
        if not artifact.exists() or work_dir not in artifact.resolve().parents:
            raise OptimizationError(f"{config.type} did not write its artifact inside its work folder")
        facts = _json_ready(product.facts)
        manifest = store.save(
            job_id,
            artifact,
            technique=config.type,
            format=product.format,
            parent=version_id,
            params=config.model_dump(mode="json"),
            metrics={"facts": facts},
            load_options=product.load_options.model_dump(mode="json"),
            move=True,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report(100, f"{config.type}: stored version {manifest.id}")
    _log.info(
        "applied technique",
        extra={"job_id": job_id, "technique": config.type, "parent": version_id, "version_id": manifest.id},
    )
    return AppliedTechnique(version=manifest, facts=facts)


_FORMAT_NAMES = {"onnx": "an ONNX model", "torchscript": "a TorchScript archive"}


def _check_input_format(spec: TechniqueSpec, source_format: str, version_id: str) -> None:
    """Refuse a source the technique does not take, saying what it takes and what the version is."""
    if source_format in spec.input_formats:
        return
    takes_onnx = "onnx" in spec.input_formats
    takes_torch = any(fmt != "onnx" for fmt in spec.input_formats)
    accepted = " or ".join(
        kind for kind, ok in (("ONNX models", takes_onnx), ("eager PyTorch modules", takes_torch)) if ok
    )
    raise OptimizationError(
        f"{spec.name} transforms {accepted}, but version {version_id} is "
        f"{_FORMAT_NAMES.get(source_format, source_format)}",
        hint=(
            "apply it to an earlier PyTorch version of this job (TorchScript and ONNX cannot be changed "
            "back into eager modules)"
            if takes_torch
            else "export the version with onnx_export first"
        ),
        detail={"takes": list(spec.input_formats), "version_format": source_format},
    )


def _json_ready(value: Any) -> Any:
    """Turn numpy/torch scalars and tuples into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
