"""Task metrics on labelled data: action error, action-token accuracy, classification accuracy.

`kind` says what the labels are and picks the headline:
- "actions": continuous actions; headline `action_mse` (lower is better, with a normal 95% interval over
  samples); also L1 and the fraction of samples whose largest absolute action error is within `tolerance`.
- "tokens": integer token ids per position (action tokens, text); headline `token_accuracy` (Wilson interval
  over the scored positions); positions labelled `ignore_index` are not scored.
- "classes": one integer class per sample; headline `accuracy` (Wilson interval over samples).
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import torch

from tools.errors import ValidationError
from tools.evaluation.fidelity import Batches, as_batches
from tools.evaluation.types import AccuracyResult
from tools.intake import LoadedModel
from tools.reference.reaching import wilson_interval
from tools.techniques.artifacts import run_outputs

TaskKind = Literal["actions", "tokens", "classes"]
DEFAULT_TOLERANCE_FRACTION = 0.1
"""Without an explicit tolerance, an action counts as right when every dimension is off by at most this
fraction of the largest absolute label value (recorded in the result)."""
Z95 = 1.959964


def measure_task(
    model: LoadedModel,
    inputs: Batches | Mapping[str, torch.Tensor],
    labels: Sequence[torch.Tensor] | torch.Tensor,
    kind: TaskKind = "actions",
    *,
    tolerance: float | None = None,
    output_index: int = 0,
    ignore_index: int = -100,
) -> AccuracyResult:
    """Score `model`'s output `output_index` against `labels` (one label tensor per input batch)."""
    batches = as_batches(inputs)
    label_batches = [labels] if isinstance(labels, torch.Tensor) else list(labels)
    if len(label_batches) != len(batches):
        raise ValidationError(f"{len(label_batches)} label batches for {len(batches)} input batches")
    if kind not in ("actions", "tokens", "classes"):
        raise ValidationError(f"kind must be 'actions', 'tokens' or 'classes', got {kind!r}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise ValidationError(f"tolerance must be a positive number, got {tolerance}")
    predictions = []
    for batch in batches:
        outputs = run_outputs(model, batch)
        if not 0 <= output_index < len(outputs):
            raise ValidationError(
                f"output_index {output_index} is out of range; the model has {len(outputs)}"
            )
        predictions.append(outputs[output_index])
    if kind == "actions":
        return _action_metrics(predictions, label_batches, tolerance)
    return _discrete_metrics(predictions, label_batches, kind, ignore_index)


def _action_metrics(
    predictions: list[torch.Tensor], labels: list[torch.Tensor], tolerance: float | None
) -> AccuracyResult:
    pairs = []
    for index, (prediction, label) in enumerate(zip(predictions, labels)):
        label = label.detach().to("cpu", torch.float64)
        if prediction.numel() != label.numel() or prediction.shape[0] != label.shape[0]:
            raise ValidationError(
                f"batch {index}: the model predicts {tuple(prediction.shape)}, "
                f"the labels are {tuple(label.shape)}",
                hint="action labels must match the action output sample for sample",
            )
        pairs.append((prediction.double().reshape(label.shape[0], -1), label.reshape(label.shape[0], -1)))
    errors = torch.cat([prediction - label for prediction, label in pairs])
    label_scale = float(torch.cat([label for _, label in pairs]).abs().max())
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE_FRACTION * label_scale if label_scale > 0 else 1e-6
    per_sample_mse = errors.pow(2).mean(dim=1)
    samples = int(errors.shape[0])
    mse = float(per_sample_mse.mean())
    spread = Z95 * float(per_sample_mse.std()) / math.sqrt(samples) if samples > 1 else 0.0
    within = int((errors.abs().max(dim=1).values <= tolerance).sum())
    low, high = wilson_interval(within, samples)
    return AccuracyResult(
        level="task",
        metric="action_mse",
        value=mse,
        higher_is_better=False,
        ci_low=max(0.0, mse - spread),
        ci_high=mse + spread,
        samples=samples,
        details={
            "action_mse": mse,
            "action_l1": float(errors.abs().mean()),
            "action_rmse": math.sqrt(mse),
            "max_abs_error": float(errors.abs().max()),
            "within_tolerance": within / samples,
            "within_tolerance_ci95": [low, high],
            "tolerance": tolerance,
            "label_scale": label_scale,
        },
    )


def _discrete_metrics(
    predictions: list[torch.Tensor], labels: list[torch.Tensor], kind: TaskKind, ignore_index: int
) -> AccuracyResult:
    correct_total, scored_total, exact, samples = 0, 0, 0, 0
    for index, (prediction, label) in enumerate(zip(predictions, labels)):
        label = label.detach().to("cpu")
        if label.is_floating_point():
            raise ValidationError(f"batch {index}: {kind} labels must be integers, got {label.dtype}")
        if kind == "classes":
            label = label.reshape(-1)
        if tuple(prediction.shape[:-1]) == tuple(label.shape) and prediction.ndim == label.ndim + 1:
            predicted = prediction.argmax(dim=-1)  # scores: the last axis holds the classes
        elif tuple(prediction.shape) == tuple(label.shape):
            predicted = prediction.round().long()  # the model already returns ids
        else:
            raise ValidationError(
                f"batch {index}: the model predicts {tuple(prediction.shape)}, "
                f"the labels are {tuple(label.shape)}",
                hint="give scores (..., classes) or ids shaped like the labels",
            )
        mask = label != ignore_index
        hits = (predicted == label) & mask
        correct_total += int(hits.sum())
        scored_total += int(mask.sum())
        rows = label.shape[0] if label.ndim else 1
        per_row_ok = (hits | ~mask).reshape(rows, -1).all(dim=1)
        exact += int(per_row_ok.sum())
        samples += rows
    if scored_total == 0:
        raise ValidationError(f"every label equals ignore_index ({ignore_index}); nothing to score")
    accuracy = correct_total / scored_total
    low, high = wilson_interval(correct_total, scored_total)
    details: dict[str, object] = {"correct": correct_total, "scored": scored_total}
    if kind == "tokens":
        details["sequence_accuracy"] = exact / samples
    return AccuracyResult(
        level="task",
        metric="token_accuracy" if kind == "tokens" else "accuracy",
        value=accuracy,
        higher_is_better=True,
        ci_low=low,
        ci_high=high,
        samples=scored_total if kind == "tokens" else samples,
        details=details,
    )
