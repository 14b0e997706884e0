"""Task metrics on labelled data: the reference VLA's action error against expert labels, and what damage does
to it; token and class accuracy with their intervals; refusals of mismatched labels."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from tools.errors import ValidationError
from tools.evaluation.task_metrics import measure_task
from tools.evaluation.types import AccuracyResult
from tools.inputs import InputSpec
from tools.intake import LoadedModel, load_model
from tools.reference import reference_model_file
from tools.reference.calibration import reaching_calibration
from tools.techniques.artifacts import save_torch_module

pytestmark = pytest.mark.integration


def _noised(model: LoadedModel, scale: float, seed: int = 0) -> LoadedModel:
    module = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * spread)
    return dataclasses.replace(model, module=module)


def _loaded(module: nn.Module, specs: list[InputSpec], directory: Path) -> LoadedModel:
    directory.mkdir(parents=True, exist_ok=True)
    path, _, options = save_torch_module(module.eval(), directory, specs)
    return load_model(path, options, directory / "data")


@pytest.fixture(scope="module")
def vla(reference_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path, options = reference_model_file("vla", reference_cache)
    return load_model(path, options, tmp_path_factory.mktemp("data"))


def test_reference_vla_matches_expert_actions_and_damage_shows(vla: LoadedModel) -> None:
    data = reaching_calibration(4, 32, seed=2024)
    result = measure_task(vla, data.batches, data.labels, "actions", tolerance=0.02)
    assert result.level == "task" and result.metric == "action_mse" and not result.higher_is_better
    assert result.samples == 128 and result.ci_low <= result.value <= result.ci_high
    zero_action_mse = float(torch.cat(data.labels).pow(2).mean())
    assert result.value < 0.1 * zero_action_mse  # far better than standing still (measured 0.06)
    assert result.details["action_l1"] < 0.01 and result.details["within_tolerance"] > 0.35  # measured 0.52
    damaged = measure_task(_noised(vla, 0.5), data.batches, data.labels, "actions", tolerance=0.02)
    assert damaged.value > result.ci_high  # outside the reference's interval, not just noise
    assert damaged.details["within_tolerance"] < result.details["within_tolerance"]
    assert damaged.details["action_l1"] > result.details["action_l1"]
    assert AccuracyResult.model_validate_json(result.model_dump_json()) == result


def test_default_tolerance_is_a_tenth_of_the_label_scale(vla: LoadedModel) -> None:
    data = reaching_calibration(1, 16, seed=5)
    result = measure_task(vla, data.batches[0], data.labels[0])
    scale = float(data.labels[0].abs().max())
    assert (
        result.details["tolerance"] == pytest.approx(0.1 * scale) and result.details["label_scale"] == scale
    )


def test_classification_accuracy_with_wilson_interval(tmp_path: Path) -> None:
    features = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    labels = features.argmax(dim=1)
    identity = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(4))
    spec = [InputSpec(name="input", shape=(1, 4))]
    right = measure_task(_loaded(identity, spec, tmp_path / "right"), {"input": features}, labels, "classes")
    assert (
        right.metric == "accuracy" and right.higher_is_better and right.value == 1.0 and right.samples == 64
    )
    assert 0.9 < right.ci_low < 1.0 == right.ci_high
    with torch.no_grad():
        identity.weight.copy_(torch.eye(4).roll(1, dims=0))  # predicts the wrong class every time
    wrong = measure_task(_loaded(identity, spec, tmp_path / "wrong"), {"input": features}, labels, "classes")
    assert wrong.value == 0.0 and wrong.ci_high < 0.1


def test_token_accuracy_ignores_padding_and_reports_sequences(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 24))
    spec = [InputSpec(name="input_ids", shape=(1, 6), dtype="int64", low=0, high=32)]
    loaded = _loaded(model, spec, tmp_path)
    ids = torch.randint(0, 32, (8, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(ids).argmax(dim=-1)
    labels[:, -2:] = -100  # padding is not scored
    exact = measure_task(loaded, {"input_ids": ids}, labels, "tokens")
    assert exact.metric == "token_accuracy" and exact.value == 1.0 and exact.samples == 8 * 4
    assert exact.details["sequence_accuracy"] == 1.0
    shifted = labels.clone()
    shifted[0, 0] = (shifted[0, 0] + 1) % 24
    one_wrong = measure_task(loaded, {"input_ids": ids}, shifted, "tokens")
    assert one_wrong.value == pytest.approx(31 / 32) and one_wrong.details["sequence_accuracy"] == 7 / 8


def test_refuses_mismatched_labels(vla: LoadedModel) -> None:
    data = reaching_calibration(2, 8, seed=3)
    with pytest.raises(ValidationError, match="label batches"):
        measure_task(vla, data.batches, data.labels[:1])
    with pytest.raises(ValidationError, match="labels are"):
        measure_task(vla, data.batches, [label[:, :4] for label in data.labels])
    with pytest.raises(ValidationError, match="tolerance"):
        measure_task(vla, data.batches, data.labels, tolerance=0.0)
    with pytest.raises(ValidationError, match="integers"):
        measure_task(vla, data.batches, data.labels, "tokens")
    with pytest.raises(ValidationError, match="kind"):
        measure_task(vla, data.batches, data.labels, "poses")  # type: ignore[arg-type]
