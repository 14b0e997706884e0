"""Magnitude pruning: the measured sparsity is the target, protected layers keep every weight, the dense file
does not shrink (only a compressed form does), tied weights stay tied, ONNX sources are refused, determinism.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest
import torch
from torch import nn

from tests.technique_support import load, outputs, reference_store, store_vla_onnx
from tests.tools.pruning_support import mean_cosine
from tools.errors import OptimizationError
from tools.pruning.unstructured import MagnitudePruneConfig, magnitude_prune
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, parse_config

GLOBAL = MagnitudePruneConfig(sparsity=0.6, scope="global", protected=("action_head",))


@pytest.fixture(scope="module")
def vla(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> SimpleNamespace:
    """The VLA pruned once globally to 60% with the action head protected, and held-out task inputs."""
    ctx = reference_store(tmp_path_factory, reference_cache, "magnitude", "vla")
    source = ctx.versions["vla"]
    result = apply(ctx.store, source.job_id, source.id, GLOBAL, data_dir=ctx.data_dir)
    ctx.source = source
    ctx.result = result
    ctx.original = load(ctx.store, source, ctx.data_dir).module
    ctx.pruned = load(ctx.store, result.version, ctx.data_dir).module
    ctx.held_out = reaching_calibration(2, 32, seed=5000, with_labels=False).batches
    return ctx


def _weights(model: nn.Module, protected: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not name.startswith(protected)
    }


def test_config_round_trips_and_refuses_bad_values() -> None:
    config = MagnitudePruneConfig(
        sparsity=0.9, scope="per_layer", layer_types=("conv",), protected=("re:^a",)
    )
    assert MagnitudePruneConfig.model_validate_json(config.model_dump_json()) == config
    assert parse_config(config.model_dump(mode="json")) == config
    for bad in (
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"scope": "model"},
        {"layer_types": ()},
        {"protected": ("re:[",)},
        {"protected": ("",)},
    ):
        with pytest.raises(pydantic.ValidationError):
            MagnitudePruneConfig(**bad)


def test_onnx_source_is_refused(vla, reference_cache: Path) -> None:
    onnx_version = store_vla_onnx(vla.store, reference_cache, vla.data_dir)
    with pytest.raises(OptimizationError, match="transforms eager PyTorch modules.*ONNX"):
        apply(vla.store, onnx_version.job_id, onnx_version.id, GLOBAL, data_dir=vla.data_dir)


def test_measured_sparsity_is_the_target_and_protected_layers_are_untouched(vla) -> None:
    weights = _weights(vla.pruned, ("action_head",))
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert abs(zeros / total - GLOBAL.sparsity) <= 0.01
    assert vla.result.facts["measured_sparsity"] == pytest.approx(zeros / total, abs=1e-6)
    assert vla.result.facts["parameters_considered"] == total
    # Global ranking: layers end up with different sparsity.
    assert len({round(s, 2) for s in vla.result.facts["layer_sparsity"].values()}) > 3
    original_head = vla.original.action_head.state_dict()
    for key, value in vla.pruned.action_head.state_dict().items():
        assert torch.equal(value, original_head[key]), key
    for name, module in vla.pruned.action_head.named_modules():
        if isinstance(module, nn.Linear):
            assert int((module.weight == 0).sum()) == 0, name


def test_dense_file_keeps_its_size_and_only_compression_gains(vla) -> None:
    source_size = vla.store.artifact_path(vla.source.job_id, vla.source.id).stat().st_size
    pruned_size = vla.store.artifact_path(vla.result.version.job_id, vla.result.version.id).stat().st_size
    assert abs(pruned_size - source_size) / source_size < 0.01
    facts = vla.result.facts
    assert facts["weights_zlib_bytes_after"] < 0.95 * facts["weights_zlib_bytes_before"]


def test_outputs_keep_their_shape_and_fidelity_is_measured(vla) -> None:
    batch = vla.held_out[0]
    assert vla.pruned(**batch).shape == vla.original(**batch).shape
    cosine = mean_cosine(vla.original, vla.pruned, vla.held_out)
    print(f"\nmagnitude 60% global (action head protected): held-out action cosine {cosine:.3f}")
    assert 0.0 < cosine < 1.0
    assert vla.result.facts["output_cosine"] < 1.0


def test_per_layer_scope_prunes_every_layer_to_the_target(vla) -> None:
    config = MagnitudePruneConfig(sparsity=0.5, scope="per_layer", layer_types=("conv",))
    result = apply(vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir)
    pruned = load(vla.store, result.version, vla.data_dir).module
    for name, module in pruned.named_modules():
        if isinstance(module, nn.Conv2d):
            assert abs(float((module.weight == 0).float().mean()) - 0.5) <= 0.01, name
        elif isinstance(module, nn.Linear):
            assert int((module.weight == 0).sum()) == 0, name


def test_same_seed_gives_the_same_pruned_weights(vla) -> None:
    again = apply(vla.store, vla.source.job_id, vla.source.id, GLOBAL, data_dir=vla.data_dir)
    pruned_again = load(vla.store, again.version, vla.data_dir).module
    first, second = vla.pruned.state_dict(), pruned_again.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_tied_weights_stay_tied() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32, 16)
            self.hidden = nn.Linear(16, 16)
            self.head = nn.Linear(16, 32, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(0)
    model = TiedLM()
    facts = magnitude_prune(model, MagnitudePruneConfig(sparsity=0.5, scope="per_layer"))
    assert model.head.weight is model.embed.weight
    assert abs(float((model.embed.weight == 0).float().mean()) - 0.5) <= 0.01
    assert facts["layers_pruned"] == 2


def test_hf_llama_is_pruned_with_lm_head_protected(tmp_path_factory, reference_cache: Path) -> None:
    ctx = reference_store(tmp_path_factory, reference_cache, "magnitude-llama", "hf_llama")
    source = ctx.versions["hf_llama"]
    config = MagnitudePruneConfig(sparsity=0.5, protected=("*lm_head*",))
    result = apply(ctx.store, source.job_id, source.id, config, data_dir=ctx.data_dir)
    pruned = load(ctx.store, result.version, ctx.data_dir)
    original = load(ctx.store, source, ctx.data_dir)
    assert int((pruned.module.lm_head.weight == 0).sum()) == 0
    assert abs(result.facts["measured_sparsity"] - 0.5) <= 0.01
    inputs = original.example_inputs()
    assert outputs(pruned, inputs)[0].shape == outputs(original, inputs)[0].shape


def test_hf_llava_with_output_capturing_hooks_is_saved_and_runs(
    tmp_path_factory, reference_cache: Path
) -> None:
    ctx = reference_store(tmp_path_factory, reference_cache, "magnitude-llava", "hf_llava_siglip")
    source = ctx.versions["hf_llava_siglip"]
    result = apply(
        ctx.store, source.job_id, source.id, MagnitudePruneConfig(sparsity=0.3), data_dir=ctx.data_dir
    )
    pruned = load(ctx.store, result.version, ctx.data_dir)
    inputs = pruned.example_inputs()
    assert all(torch.isfinite(t).all() for t in outputs(pruned, inputs))
    assert abs(result.facts["measured_sparsity"] - 0.3) <= 0.01
