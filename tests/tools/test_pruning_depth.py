"""Depth pruning: fewer blocks and lower latency, the block chosen is the one measured least important (a block
made an identity is dropped first by both measures), HF configs follow, bad requests refused, determinism."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest
import torch

from tests.technique_support import load, outputs, reference_store, store_vla_onnx
from tests.tools.pruning_support import faster, mean_cosine, store_module
from tools.errors import NotApplicableError, OptimizationError
from tools.pruning.common import count_parameters
from tools.pruning.depth import DepthPruneConfig, find_block_lists
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, parse_config

DROP_ONE = DepthPruneConfig(num_blocks_to_drop=1)


@pytest.fixture(scope="module")
def vla(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> SimpleNamespace:
    """The VLA with one block dropped by block influence on reaching calibration inputs."""
    ctx = reference_store(tmp_path_factory, reference_cache, "depth", "vla", "conv_policy", "hf_llama")
    source = ctx.versions["vla"]
    ctx.source = source
    ctx.calibration = reaching_calibration(4, 16, seed=1000, with_labels=False)
    ctx.result = apply(
        ctx.store, source.job_id, source.id, DROP_ONE, data_dir=ctx.data_dir, calibration=ctx.calibration
    )
    ctx.original = load(ctx.store, source, ctx.data_dir).module
    ctx.pruned = load(ctx.store, ctx.result.version, ctx.data_dir).module
    ctx.held_out = reaching_calibration(2, 32, seed=5000, with_labels=False).batches
    return ctx


def test_config_round_trips_and_refuses_bad_values() -> None:
    for config in (
        DepthPruneConfig(fraction=0.5, importance="drop_error", protected_indices=(0, -1), protected=("x",)),
        DepthPruneConfig(num_blocks_to_drop=2, block_list="model.layers"),
    ):
        assert DepthPruneConfig.model_validate_json(config.model_dump_json()) == config
        assert parse_config(config.model_dump(mode="json")) == config
    for bad in (
        {"num_blocks_to_drop": 1, "fraction": 0.5},
        {"fraction": 1.0},
        {"num_blocks_to_drop": 0},
        {"importance": "magnitude"},
        {"calibration_batches": 0},
    ):
        with pytest.raises(pydantic.ValidationError):
            DepthPruneConfig(**bad)


def test_unprunable_sources_are_refused_clearly(vla, reference_cache: Path) -> None:
    onnx_version = store_vla_onnx(vla.store, reference_cache, vla.data_dir)
    with pytest.raises(OptimizationError, match="transforms eager PyTorch modules.*ONNX"):
        apply(vla.store, onnx_version.job_id, onnx_version.id, DROP_ONE, data_dir=vla.data_dir)
    conv = vla.versions["conv_policy"]
    with pytest.raises(NotApplicableError, match="no transformer block list"):
        apply(vla.store, conv.job_id, conv.id, DROP_ONE, data_dir=vla.data_dir)
    with pytest.raises(OptimizationError, match="not a transformer block list") as caught:
        apply(
            vla.store,
            vla.source.job_id,
            vla.source.id,
            DepthPruneConfig(num_blocks_to_drop=1, block_list="action_head"),
            data_dir=vla.data_dir,
        )
    assert "language_backbone.blocks, blocks" in caught.value.hint
    too_many = DepthPruneConfig(num_blocks_to_drop=2)
    with pytest.raises(OptimizationError, match="can drop only 1 of the 2 blocks"):
        apply(vla.store, vla.source.job_id, vla.source.id, too_many, data_dir=vla.data_dir)


def test_one_block_fewer_is_faster_and_keeps_the_interface(vla) -> None:
    facts = vla.result.facts
    assert facts["blocks_before"] == {"language_backbone.blocks": 1, "blocks": 2}
    assert facts["blocks_after"] == {"language_backbone.blocks": 1, "blocks": 1}
    assert len(vla.pruned.blocks) == 1
    assert [d["block"] for d in facts["dropped"]] == ["blocks.1"]  # blocks.0 is protected by default
    assert count_parameters(vla.pruned) == facts["parameters_after"] < facts["parameters_before"]
    batch = {name: tensor[:1] for name, tensor in vla.held_out[0].items()}
    assert vla.pruned(**batch).shape == vla.original(**batch).shape
    original_head = vla.original.action_head.state_dict()
    assert all(torch.equal(v, original_head[k]) for k, v in vla.pruned.action_head.state_dict().items())
    rounds = faster(vla.original, vla.pruned, batch)
    cosine = mean_cosine(vla.original, vla.pruned, vla.held_out)
    print(
        f"\ndepth -1 block: scores {facts['scores']}, p50 original/pruned ms {rounds}, "
        f"held-out action cosine {cosine:.3f}"
    )
    assert rounds[-1][1] < rounds[-1][0]
    assert 0.0 < cosine < 0.999


@pytest.mark.parametrize("identity_block", [0, 1])
@pytest.mark.parametrize("importance", ["cosine", "drop_error"])
def test_a_block_made_identity_is_dropped_first(
    vla, tmp_path: Path, identity_block: int, importance: str
) -> None:
    model = load(vla.store, vla.source, vla.data_dir).module
    block = model.blocks[identity_block]
    with torch.no_grad():
        for layer in (block.attn.o_proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    specs = load(vla.store, vla.source, vla.data_dir).input_specs
    job = f"identity-{identity_block}-{importance}"
    source = store_module(vla.store, job, model, specs, tmp_path, vla.data_dir)
    config = DepthPruneConfig(
        num_blocks_to_drop=1, importance=importance, protected_indices=(), calibration_batches=2
    )
    result = apply(
        vla.store, source.job_id, source.id, config, data_dir=vla.data_dir, calibration=vla.calibration
    )
    assert [d["block"] for d in result.facts["dropped"]] == [f"blocks.{identity_block}"]
    assert result.facts["scores"][f"blocks.{identity_block}"] == pytest.approx(0.0, abs=1e-5)
    # Dropping an identity block changes nothing.
    assert result.facts["output_cosine"] == pytest.approx(1.0, abs=1e-5)


def test_hf_llama_config_and_layer_indices_follow(vla) -> None:
    source = vla.versions["hf_llama"]
    config = DepthPruneConfig(num_blocks_to_drop=1, protected_indices=())
    result = apply(vla.store, source.job_id, source.id, config, data_dir=vla.data_dir)
    original, pruned = load(vla.store, source, vla.data_dir), load(vla.store, result.version, vla.data_dir)
    assert len(pruned.module.model.layers) == pruned.module.config.num_hidden_layers == 1
    assert pruned.module.model.layers[0].self_attn.layer_idx == 0
    assert [name for name, _ in find_block_lists(pruned.module)] == ["model.layers"]
    inputs = original.example_inputs()
    assert outputs(pruned, inputs)[0].shape == outputs(original, inputs)[0].shape


def test_same_seed_and_inputs_give_the_same_choice_and_weights(vla) -> None:
    again = apply(
        vla.store,
        vla.source.job_id,
        vla.source.id,
        DROP_ONE,
        data_dir=vla.data_dir,
        calibration=vla.calibration,
    )
    assert again.facts["scores"] == vla.result.facts["scores"]
    first, second = vla.pruned.state_dict(), load(vla.store, again.version, vla.data_dir).module.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
