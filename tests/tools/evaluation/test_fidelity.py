"""Fidelity to the original: exact for the same model, within float tolerance across torch and ONNX Runtime,
lower for damaged copies (more damage, lower fidelity), with top-1 agreement and KL for class scores."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tools.errors import MeasurementError, ValidationError
from tools.evaluation.fidelity import batches_digest, measure_fidelity
from tools.evaluation.types import AccuracyResult
from tools.inputs import InputSpec
from tools.intake import LoadedModel, LoadOptions, load_model
from tools.intake.types import ModelFormat
from tools.reference import reference_model_file
from tools.reference.build import read_reference_metadata
from tools.reference.calibration import reaching_calibration
from tools.techniques.artifacts import save_torch_module

pytestmark = pytest.mark.integration

TOKEN_SPECS = [InputSpec(name="input_ids", shape=(1, 8), dtype="int64", low=0, high=64)]


def _noised(model: LoadedModel, scale: float, seed: int = 0) -> LoadedModel:
    """A copy whose every parameter has Gaussian noise of `scale` times its own spread added."""
    module = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * spread)
    return dataclasses.replace(model, module=module)


def _token_model(bins: int = 32) -> nn.Module:
    """An action-token head: token ids in, scores over `bins` action bins per position out."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(64, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, bins)).eval()


def _token_batches() -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(seed))}
        for seed in range(2)
    ]


@pytest.fixture(scope="module")
def vla_torch(reference_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path, options = reference_model_file("vla", reference_cache)
    return load_model(path, options, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vla_onnx(built_vla: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    onnx_file = built_vla / read_reference_metadata(built_vla)["formats"]["onnx"]
    return load_model(onnx_file, LoadOptions(), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def token_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, LoadedModel]:
    """The token model loaded as a pickled torch module and as its ONNX export."""
    directory = tmp_path_factory.mktemp("tokens")
    module = _token_model()
    path, _, options = save_torch_module(module, directory, TOKEN_SPECS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (torch.randint(0, 64, (2, 8)),),
            input_names=["input_ids"],
            output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            dynamo=True,
            verbose=False,
        )
    program.save(str(directory / "tokens.onnx"))
    data = directory / "data"
    return load_model(path, options, data), load_model(directory / "tokens.onnx", LoadOptions(), data)


def test_unchanged_model_is_exactly_faithful(vla_torch: LoadedModel) -> None:
    inputs = reaching_calibration(2, 16, seed=11).batches
    twin = dataclasses.replace(vla_torch, module=copy.deepcopy(vla_torch.module))  # run, not short-cut
    result = measure_fidelity(vla_torch, twin, inputs)
    assert isinstance(result, AccuracyResult) and result.level == "fidelity" and result.higher_is_better
    assert result.metric == "min_cosine" and result.value == pytest.approx(1.0, abs=1e-12)
    assert result.samples == 32 and result.details["batches"] == 2
    (output,) = result.details["outputs"]
    assert output["max_abs_error"] == 0.0 and output["relative_l2"] == 0.0
    assert "top1_agreement" not in output  # (B, 8, 2) action chunks are not class scores
    assert "accuracy" not in result.label  # fidelity is never called accuracy
    assert AccuracyResult.model_validate_json(result.model_dump_json()) == result


def test_torch_and_its_onnx_export_agree_within_float_tolerance(
    vla_torch: LoadedModel, vla_onnx: LoadedModel, token_models: tuple[LoadedModel, LoadedModel]
) -> None:
    actions = measure_fidelity(vla_torch, vla_onnx, reaching_calibration(2, 16, seed=12).batches)
    assert actions.value > 0.99999 and actions.details["max_relative_l2"] < 1e-3
    assert actions.details["max_abs_error"] < 1e-4
    torch_tokens, onnx_tokens = token_models
    scores = measure_fidelity(torch_tokens, onnx_tokens, _token_batches())
    (output,) = scores.details["outputs"]
    assert output["top1_agreement"] == 1.0 and output["positions"] == 2 * 16 * 8
    assert 0.0 <= output["kl_divergence"] < 1e-9 and scores.value > 0.99999


def test_damage_lowers_fidelity_in_proportion(vla_torch: LoadedModel) -> None:
    inputs = reaching_calibration(2, 16, seed=13).batches
    mild = measure_fidelity(vla_torch, _noised(vla_torch, 0.05), inputs)
    heavy = measure_fidelity(vla_torch, _noised(vla_torch, 0.5), inputs)
    assert 1.0 > mild.value > heavy.value
    assert 0 < mild.details["max_relative_l2"] < heavy.details["max_relative_l2"]
    assert heavy.details["max_abs_error"] > mild.details["max_abs_error"] > 0


def test_damaged_token_scores_lose_top1_agreement_and_gain_kl(
    token_models: tuple[LoadedModel, LoadedModel],
) -> None:
    torch_tokens, onnx_tokens = token_models
    same = measure_fidelity(torch_tokens, torch_tokens, _token_batches())
    assert same.details["min_top1_agreement"] == 1.0 and same.details["max_kl_divergence"] == 0.0
    damaged = measure_fidelity(onnx_tokens, _noised(torch_tokens, 1.0), _token_batches())
    assert damaged.details["min_top1_agreement"] < 0.9 and damaged.details["max_kl_divergence"] > 1e-3
    explicit = measure_fidelity(torch_tokens, _noised(torch_tokens, 1.0), _token_batches(), logits_outputs=[])
    assert "top1_agreement" not in explicit.details["outputs"][0]  # an explicit empty list turns scoring off


def test_refuses_unusable_requests(
    vla_torch: LoadedModel, token_models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="no inputs"):
        measure_fidelity(vla_torch, vla_torch, [])
    with pytest.raises(ValidationError, match="logits_outputs"):
        measure_fidelity(vla_torch, vla_torch, reaching_calibration(1, 4).batches, logits_outputs=[3])
    path, _, options = save_torch_module(_token_model(bins=16), tmp_path, TOKEN_SPECS)
    narrower = load_model(path, options, tmp_path / "data")
    with pytest.raises(MeasurementError, match="shape"):
        measure_fidelity(token_models[0], narrower, _token_batches())


class _Counting(nn.Module):
    """Counts its forward passes: how often a fidelity measurement ran the model."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 3)
        self.scale = scale
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.layer(x) * self.scale


def _loaded(module: nn.Module) -> LoadedModel:
    """`module` as a loaded model with one (1, 4) float input named x."""
    return LoadedModel(
        source=Path("m.pt"),
        path=Path("m.pt"),
        format=ModelFormat.TORCH_PICKLED_MODULE,
        options=LoadOptions(),
        input_specs=[InputSpec(name="x", shape=(1, 4), dtype="float32")],
        module=module,
    )


def _counting_model(scale: float = 1.0) -> LoadedModel:
    return _loaded(_Counting(scale))


def test_the_reference_runs_once_per_data_and_a_torn_cache_is_recomputed(tmp_path: Path) -> None:
    """A default-size DDPM policy takes 30 s a call: its outputs on the job's data are kept, not rerun."""
    reference, candidate = _counting_model(), _counting_model(scale=0.5)
    batches = [{"x": torch.randn(2, 4, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    cache = tmp_path / "fidelity" / f"{batches_digest(batches)}.pt"

    baseline = measure_fidelity(reference, reference, batches, reference_cache=cache)
    assert reference.module.calls == 3, "the baseline against itself runs the model once, not twice"
    assert baseline.value == pytest.approx(1.0) and baseline.details["max_abs_error"] == 0.0
    assert cache.is_file() and not list(cache.parent.glob(".*.tmp"))

    first = measure_fidelity(reference, candidate, batches, reference_cache=cache)
    second = measure_fidelity(reference, candidate, batches, reference_cache=cache)
    assert reference.module.calls == 3 and candidate.module.calls == 6  # the reference comes from the cache
    assert first.details == second.details and first.details["max_relative_l2"] == pytest.approx(
        0.5, abs=1e-6
    )

    cache.write_bytes(cache.read_bytes()[:40])  # a crash mid-write elsewhere, or a disk full
    torn = measure_fidelity(reference, candidate, batches, reference_cache=cache)
    assert reference.module.calls == 6 and torn.details == first.details

    other = [{"x": batch["x"] + 1} for batch in batches]
    assert batches_digest(other) != batches_digest(batches) != batches_digest(batches[:2])
    assert batches_digest([{"x": batch["x"].clone()} for batch in batches]) == batches_digest(batches)


class _OneBadRow(nn.Module):
    """The identity, except that rows whose first feature exceeds 2 come out sign-flipped: one bad input in
    many barely moves the pooled cosine, and the per-sample worst case is what shows it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = (x[:, :1] > 2).to(x.dtype)
        return x * (1 - 2 * flip)


def test_the_headline_is_the_worst_held_out_sample_not_the_pooled_cosine() -> None:
    rows = torch.rand(31, 4, generator=torch.Generator().manual_seed(0))  # every first feature below 1
    outlier = torch.tensor([[3.0, 0.1, 0.1, 0.1]])
    batches = [{"x": rows[:16]}, {"x": torch.cat([rows[16:], outlier])}]
    result = measure_fidelity(_loaded(nn.Identity()), _loaded(_OneBadRow()), batches)
    pooled = result.details["outputs"][0]["cosine"]
    assert pooled > 0.5, "one flipped row of 32 keeps the pooled cosine high"
    assert result.details["worst_sample_cosine"] == pytest.approx(-1.0)
    assert result.value == pytest.approx(-1.0) and result.samples == 32
    assert "1/33" in result.details["worst_case"]


def test_synthetic_held_out_inputs_aim_for_32_samples_and_are_decided_once(tmp_path: Path) -> None:
    """With no data, a fast original is judged on 32 synthetic samples; the count and the original's outputs
    are kept, so the next version's judgement reuses both without running the original again."""
    from tools.evaluation.fidelity import SYNTHETIC_PLAN, WORST_CASE_SAMPLES, synthetic_held_out

    reference, candidate = _counting_model(), _counting_model(scale=0.5)
    cache_dir = tmp_path / "fidelity"
    batches = synthetic_held_out(reference, cache_dir)
    assert sum(int(b["x"].shape[0]) for b in batches) == WORST_CASE_SAMPLES
    assert reference.module.calls == len(batches) and (cache_dir / SYNTHETIC_PLAN).is_file()
    again = synthetic_held_out(reference, cache_dir)
    assert batches_digest(again) == batches_digest(batches) and reference.module.calls == len(batches)
    cache = cache_dir / f"{batches_digest(batches)}.pt"
    result = measure_fidelity(reference, candidate, again, reference_cache=cache)
    assert reference.module.calls == len(batches), "the original's outputs came from the cache"
    assert result.samples == WORST_CASE_SAMPLES


class _Slow(_Counting):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(1.0)
        return super().forward(x)


def test_a_slow_original_gets_the_fewest_synthetic_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tools.evaluation.fidelity as fidelity

    monkeypatch.setattr(fidelity, "SYNTHETIC_BUDGET_S", 2.0)  # a 1 s call: 2 s buy no more than the least
    reference = _loaded(_Slow())
    batches = fidelity.synthetic_held_out(reference, tmp_path / "fidelity")
    assert len(batches) == fidelity.SYNTHETIC_MIN_BATCHES == reference.module.calls
