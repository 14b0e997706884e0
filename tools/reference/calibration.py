"""Calibration and distillation data for the reaching-task references: observations with expert actions."""

from __future__ import annotations

from tools.errors import ValidationError
from tools.reference.reaching import make_dataset
from tools.reference.training import POLICY_INPUTS, to_tensors
from tools.techniques.base import CalibrationData


def reaching_calibration(
    num_batches: int = 8, batch_size: int = 32, seed: int = 1000, with_labels: bool = True
) -> CalibrationData:
    """Draw `num_batches` batches of reaching observations (inputs of the reference VLA and conv policy).

    Labels are the expert's action chunks. The default seed keeps them apart from the training draws.
    """
    if num_batches <= 0 or batch_size <= 0:
        raise ValidationError(f"num_batches and batch_size must be positive, got {num_batches}, {batch_size}")
    data = to_tensors(make_dataset(num_batches * batch_size, seed))
    batches, labels = [], []
    for index in range(num_batches):
        part = slice(index * batch_size, (index + 1) * batch_size)
        batches.append({name: data[name][part] for name in POLICY_INPUTS})
        labels.append(data["actions"][part])
    return CalibrationData(batches, labels if with_labels else None, source="reference-task")
