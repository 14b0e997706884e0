"""Structured pruning: at ratio 0.5 the VLA loses over 40% of its parameters and gets faster, whole heads
go, FiLM scale and shift rows follow their conv channel, protected layers stay identical, HF Llama is
pruned (heads with GQA, MLP neurons), fused attention is refused by name, ONNX refused, determinism."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest
import torch
from torch import nn

from tests.technique_support import load, outputs, reference_store, store_vla_onnx
from tests.tools.pruning_support import faster, mean_cosine, store_module
from tools.errors import OptimizationError
from tools.inputs import InputSpec
from tools.pruning.common import count_parameters
from tools.pruning.structured import StructuredPruneConfig
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, parse_config

HALF = StructuredPruneConfig(ratio=0.5)


@pytest.fixture(scope="module")
def vla(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> SimpleNamespace:
    """The VLA pruned once at ratio 0.5 (l2, nothing protected but the output), and held-out inputs."""
    ctx = reference_store(
        tmp_path_factory, reference_cache, "structured", "vla", "conv_policy", "hf_llama", "hf_siglip_vision"
    )
    source = ctx.versions["vla"]
    ctx.source = source
    ctx.result = apply(ctx.store, source.job_id, source.id, HALF, data_dir=ctx.data_dir)
    ctx.original = load(ctx.store, source, ctx.data_dir).module
    ctx.pruned = load(ctx.store, ctx.result.version, ctx.data_dir).module
    ctx.held_out = reaching_calibration(2, 32, seed=5000, with_labels=False).batches
    return ctx


def test_config_round_trips_and_refuses_bad_values() -> None:
    config = StructuredPruneConfig(
        ratio=0.9, importance="taylor", prune_heads=False, round_to=8, iterative_steps=3, protected=("a*",)
    )
    assert StructuredPruneConfig.model_validate_json(config.model_dump_json()) == config
    assert parse_config(config.model_dump(mode="json")) == config
    for bad in (
        {"ratio": 0.95},
        {"ratio": 0.0},
        {"importance": "random"},
        {"round_to": 0},
        {"iterative_steps": 0},
        {"protected": ("re:(",)},
    ):
        with pytest.raises(pydantic.ValidationError):
            StructuredPruneConfig(**bad)


def test_onnx_source_is_refused(vla, reference_cache: Path) -> None:
    onnx_version = store_vla_onnx(vla.store, reference_cache, vla.data_dir)
    with pytest.raises(OptimizationError, match="transforms eager PyTorch modules.*ONNX"):
        apply(vla.store, onnx_version.job_id, onnx_version.id, HALF, data_dir=vla.data_dir)


def test_half_ratio_removes_over_40_percent_of_parameters_and_is_faster(vla) -> None:
    before, after = count_parameters(vla.original), count_parameters(vla.pruned)
    facts = vla.result.facts
    assert (facts["parameters_before"], facts["parameters_after"]) == (before, after)
    assert 1 - after / before >= 0.40
    assert facts["pruned_layers_removed_fraction"] >= 0.45
    source_file = vla.store.artifact_path(vla.source.job_id, vla.source.id)
    pruned_file = vla.store.artifact_path(vla.result.version.job_id, vla.result.version.id)
    assert pruned_file.stat().st_size < 0.6 * source_file.stat().st_size
    batch = {name: tensor[:1] for name, tensor in vla.held_out[0].items()}
    assert vla.pruned(**batch).shape == vla.original(**batch).shape
    assert vla.pruned.action_head.mlp[6].out_features == vla.original.action_head.mlp[6].out_features
    rounds = faster(vla.original, vla.pruned, batch)
    cosine = mean_cosine(vla.original, vla.pruned, vla.held_out)
    print(
        f"\nstructured 0.5: params {before} -> {after} ({1 - after / before:.1%} removed), "
        f"p50 original/pruned ms {rounds}, held-out action cosine {cosine:.3f}"
    )
    assert rounds[-1][1] < rounds[-1][0]
    assert -1.0 <= cosine < 0.999


def test_whole_heads_and_mlp_neurons_are_removed(vla) -> None:
    facts = vla.result.facts
    assert facts["heads"] == {
        "language_backbone.blocks.0.attn": [4, 2],
        "blocks.0.attn": [4, 2],
        "blocks.1.attn": [4, 2],
    }
    for block in vla.pruned.blocks:
        attention = block.attn
        assert attention.q_proj.out_features == attention.k_proj.out_features == 2 * attention.head_dim
        assert attention.o_proj.in_features == attention.q_proj.out_features
        assert block.mlp.fc1.out_features == block.mlp.fc2.in_features == 256
    assert facts["layer_widths"]["blocks.0.mlp.fc1"] == [[512, 128], [256, 128]]


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of the original rows that the pruned weight kept (rows are unique in trained weights)."""
    flat_original, flat_pruned = original.flatten(1), pruned.flatten(1)
    kept = []
    for row in flat_pruned:
        matches = (flat_original == row).all(dim=1).nonzero().flatten()
        assert len(matches) == 1
        kept.append(int(matches[0]))
    return kept


def test_film_scale_and_shift_rows_follow_their_conv_channel(vla) -> None:
    original_stem, pruned_stem = vla.original.vision_tower.stem, vla.pruned.vision_tower.stem
    kept_in = list(range(5))
    for original, pruned in zip(original_stem, pruned_stem):
        channels = original.conv.out_channels
        kept = _kept_rows(original.conv.weight[:, kept_in], pruned.conv.weight)
        assert len(kept) == channels // 2
        film_rows = kept + [channels + index for index in kept]
        assert torch.equal(pruned.film.weight, original.film.weight[film_rows])
        assert torch.equal(pruned.norm.running_mean, original.norm.running_mean[kept])
        kept_in = kept
    # The first stage sees the unpruned input: its output is the original's at the kept channels.
    kept = _kept_rows(original_stem[0].conv.weight, pruned_stem[0].conv.weight)
    features, condition = torch.randn(2, 5, 64, 64), torch.randn(2, 128)
    with torch.inference_mode():
        expected = original_stem[0](features, condition)[:, kept]
        assert torch.allclose(pruned_stem[0](features, condition), expected, atol=1e-5)


def test_protected_action_head_is_identical_and_taylor_rounds_widths(vla) -> None:
    config = StructuredPruneConfig(
        ratio=0.5, importance="taylor", iterative_steps=2, round_to=8, protected=("action_head",)
    )
    calibration = reaching_calibration(2, 16, seed=1000)
    result = apply(
        vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir, calibration=calibration
    )
    pruned = load(vla.store, result.version, vla.data_dir).module
    original_head = vla.original.action_head.state_dict()
    for key, value in pruned.action_head.state_dict().items():
        assert torch.equal(value, original_head[key]), key
    assert result.facts["taylor_loss"] == "mse_to_labels"
    for name, ((out_before, _), (out_after, _)) in result.facts["layer_widths"].items():
        if out_after != out_before and not name.endswith(("q_proj", "k_proj", "v_proj")):
            assert out_after % 8 == 0, name
    assert result.facts["removed_fraction"] > 0.05
    with pytest.raises(OptimizationError, match="importance='taylor' needs calibration inputs"):
        apply(vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir)


def test_same_seed_gives_the_same_pruned_weights(vla) -> None:
    again = apply(vla.store, vla.source.job_id, vla.source.id, HALF, data_dir=vla.data_dir)
    first, second = vla.pruned.state_dict(), load(vla.store, again.version, vla.data_dir).module.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_conv_policy_channels_shrink_through_the_flatten_and_concat(vla) -> None:
    source = vla.versions["conv_policy"]
    result = apply(vla.store, source.job_id, source.id, HALF, data_dir=vla.data_dir)
    original = load(vla.store, source, vla.data_dir).module
    pruned = load(vla.store, result.version, vla.data_dir).module
    convs = [m for m in pruned.backbone if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32]
    assert pruned.action_head[0].in_features == 32 * pruned.config.feature_size**2 + pruned.config.proprio_dim
    batch = {"pixel_values": torch.rand(1, 3, 64, 64), "proprio": torch.rand(1, 2)}
    assert pruned(**batch).shape == original(**batch).shape
    assert result.facts["removed_fraction"] >= 0.4


def test_hf_llama_loses_heads_in_gqa_groups_and_mlp_neurons(vla) -> None:
    source = vla.versions["hf_llama"]
    result = apply(vla.store, source.job_id, source.id, HALF, data_dir=vla.data_dir)
    original, pruned = load(vla.store, source, vla.data_dir), load(vla.store, result.version, vla.data_dir)
    attention = pruned.module.model.layers[0].self_attn
    assert attention.q_proj.out_features == 2 * attention.head_dim
    assert attention.k_proj.out_features == attention.v_proj.out_features == attention.head_dim
    assert pruned.module.model.layers[0].mlp.gate_proj.out_features == 64
    config = pruned.module.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (2, 1, 64)
    assert "llama.num_key_value_heads=1" in result.facts["config_updates"]
    inputs = original.example_inputs()
    assert outputs(pruned, inputs)[0].shape == outputs(original, inputs)[0].shape
    assert result.facts["removed_fraction"] > 0.2


class _FusedAttentionModel(nn.Module):
    """A token model whose attention is torch's fused nn.MultiheadAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


def test_fused_attention_keeps_its_heads_and_the_rest_is_pruned(vla, tmp_path: Path) -> None:
    """nn.MultiheadAttention (ACT's encoder and decoder) cannot lose heads: the rest of the model is pruned."""
    torch.manual_seed(0)
    specs = [InputSpec(name="tokens", shape=(1, 5, 8), dtype="float32")]
    source = store_module(vla.store, "fused", _FusedAttentionModel(), specs, tmp_path, vla.data_dir)
    for config in (HALF, StructuredPruneConfig(ratio=0.5, prune_heads=False)):
        result = apply(vla.store, source.job_id, source.id, config, data_dir=vla.data_dir)
        pruned = load(vla.store, result.version, vla.data_dir).module
        assert pruned.encoder.linear1.out_features == 32  # the MLP lost half its neurons
        assert pruned.encoder.self_attn.in_proj_weight.shape == (96, 32)  # attention untouched
        assert result.facts["unsupported_attention_kept"] == ["encoder.self_attn"]
        assert result.facts["parameters_after"] < result.facts["parameters_before"]
        assert pruned(torch.randn(1, 5, 8)).shape == (1, 5, 4)
        assert ("MultiheadAttention" in (result.facts["heads_kept_reason"] or "")) == config.prune_heads


def test_siglip_keeps_its_fused_pooling_attention_and_loses_encoder_heads(vla) -> None:
    source = vla.versions["hf_siglip_vision"]
    result = apply(vla.store, source.job_id, source.id, HALF, data_dir=vla.data_dir)
    original, pruned = load(vla.store, source, vla.data_dir), load(vla.store, result.version, vla.data_dir)
    assert result.facts["unsupported_attention_kept"] == ["head.attention"]
    assert set(map(tuple, result.facts["heads"].values())) == {(4, 2)}
    before = original.module.head.attention.in_proj_weight
    assert torch.equal(pruned.module.head.attention.in_proj_weight, before)
    inputs = original.example_inputs()
    assert [t.shape for t in outputs(pruned, inputs)] == [t.shape for t in outputs(original, inputs)]


def test_a_plain_mlp_loses_hidden_neurons_but_keeps_its_output_width(vla, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    specs = [InputSpec(name="x", shape=(1, 8), dtype="float32")]
    source = store_module(vla.store, "mlp", model, specs, tmp_path, vla.data_dir)
    result = apply(vla.store, source.job_id, source.id, HALF, data_dir=vla.data_dir)
    pruned = load(vla.store, result.version, vla.data_dir).module
    assert (pruned[0].out_features, pruned[2].in_features, pruned[2].out_features) == (32, 32, 4)
    kept = _kept_rows(model[0].weight, pruned[0].weight)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        # The output is the original's with the removed neurons' contributions taken out.
        hidden = torch.relu(model[0](x))[:, kept]
        assert torch.allclose(pruned(x), hidden @ model[2].weight[:, kept].T + model[2].bias, atol=1e-5)


def test_lerobot_act_is_pruned_around_its_multihead_attention(vla, lerobot_act_dir: Path) -> None:
    """ACT: every attention is nn.MultiheadAttention and its ResNet uses FrozenBatchNorm2d (buffers, no
    parameters). Heads are kept, the backbone's channels go with their frozen norms, and the policy still runs.
    """
    from tools.intake.types import LoadOptions
    from tools.techniques import store_original

    source = store_original(vla.store, "act-prune", lerobot_act_dir, LoadOptions(), vla.data_dir)
    original = load(vla.store, source, vla.data_dir)
    result = apply(
        vla.store, source.job_id, source.id, StructuredPruneConfig(ratio=0.3), data_dir=vla.data_dir
    )
    pruned = load(vla.store, result.version, vla.data_dir)
    assert result.facts["parameters_after"] < 0.8 * result.facts["parameters_before"]
    assert len(result.facts["unsupported_attention_kept"]) == 4 and "MultiheadAttention" in (
        result.facts["heads_kept_reason"] or ""
    )
    layer = pruned.module.policy.model.backbone.layer3[0]
    assert layer.conv1.out_channels < 256 and layer.bn1.weight.shape == (layer.conv1.out_channels,)
    inputs = original.example_inputs(seed=5)
    with torch.no_grad():
        before, after = original.module(**inputs), pruned.module(**inputs)
    assert after.shape == before.shape and torch.isfinite(after).all()
