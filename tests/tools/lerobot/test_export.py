"""Deployable forms of a LeRobot ACT: ONNX with action parity, INT8/FP16 variants, a loadable LeRobot directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tools.errors import OptimizationError
from tools.inputs import InputSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def act(lerobot_act_dir: Path) -> Any:
    from tools.lerobot.export import load_policy_module

    return load_policy_module(lerobot_act_dir)


@pytest.fixture(scope="module")
def act_export(act: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tools.lerobot.export import export_policy_onnx, observation_specs

    return export_policy_onnx(act, observation_specs(act), tmp_path_factory.mktemp("act_onnx"))


def test_act_onnx_reproduces_torch_action_chunks_on_held_out_observations(act: Any, act_export: Any) -> None:
    from tools.lerobot.parity import ParityReport

    parity = act_export.parity
    assert parity.held_out and parity.rows == 4  # batches of 1 and 3
    assert parity.min_cosine > 0.999 and parity.action_mse < 1e-8
    stored = ParityReport.load(act_export.directory / "parity.json")
    assert stored.action_mse == pytest.approx(parity.action_mse)
    manifest = json.loads((act_export.directory / "export.json").read_text())
    assert manifest["outputs"] == ["action"] and manifest["opset"] >= 17


def test_act_onnx_has_a_dynamic_batch_and_normalization_inside(act: Any, act_export: Any) -> None:
    from tools.compression.onnx_sessions import cpu_session
    from tools.lerobot.export import run_onnx

    session = cpu_session(act_export.path(), "basic")
    assert all(isinstance(item.shape[0], str) for item in session.get_inputs())
    for batch in (1, 3):
        generator = torch.Generator().manual_seed(40 + batch)
        raw = {n: torch.rand(s, generator=generator) for n, s in act.input_shapes(batch).items()}
        actions = run_onnx(session, raw)["action"]
        with torch.inference_mode():
            expected = act(*raw.values()).numpy()
        assert actions.shape == (batch, act.chunk_size, act.action_dim)
        np.testing.assert_allclose(actions, expected, atol=1e-4)
        # unnormalized: the actions live on the dataset's scale, not the network's unit scale
        assert abs(float(actions.mean()) - float(act.action_offset.mean())) < 3 * float(
            act.action_scale.max()
        )


class _Eigh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_an_operator_the_exporter_refuses_is_named(tmp_path: Path) -> None:
    from tools.lerobot.export import export_policy_onnx

    with pytest.raises(OptimizationError) as caught:
        export_policy_onnx(_Eigh(), [InputSpec(name="x", shape=(1, 4, 4))], tmp_path)
    assert caught.value.detail["operator"] == "aten._linalg_eigh.default"
    assert "aten._linalg_eigh.default" in caught.value.message


def test_static_int8_qdq_quantizes_the_conv_backbone_and_keeps_actions_close(
    act: Any, act_export: Any, tmp_path: Path
) -> None:
    from tools.lerobot.coverage import onnx_policy_variant
    from tools.lerobot.export import held_out_observations, observation_specs

    specs = observation_specs(act)
    held_out = held_out_observations(specs, count=2)
    calibration = held_out_observations(specs, count=2, batch_sizes=(4,), seed=123)  # not the held-out ones
    dynamic = onnx_policy_variant(
        act_export.directory, "int8_dynamic", tmp_path / "dyn", act, specs, held_out
    )
    static = onnx_policy_variant(
        act_export.directory, "int8_static_qdq", tmp_path / "qdq", act, specs, held_out, calibration
    )
    fp32_bytes = act_export.path().stat().st_size
    # dynamic INT8 leaves the ResNet's Conv weights float; static QDQ quantizes them: a quarter of the size
    assert dynamic.bytes > 0.9 * fp32_bytes
    assert static.bytes < 0.35 * fp32_bytes
    graph = onnx.load(str(static.directory / "policy.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # measured: static 0.021 relative L2, dynamic 0.0096 (tiny ACT, random weights)
    static_error = static.parity.outputs[0].relative_l2
    dynamic_error = dynamic.parity.outputs[0].relative_l2
    assert static_error < 5 * dynamic_error + 0.01 and static_error < 0.1
    assert static.parity.min_cosine > 0.99 and (static.directory / "parity.json").is_file()


def test_fp16_act_export_stays_within_a_thousandth(act: Any, act_export: Any, tmp_path: Path) -> None:
    from tools.lerobot.coverage import onnx_policy_variant
    from tools.lerobot.export import held_out_observations, observation_specs

    specs = observation_specs(act)
    result = onnx_policy_variant(
        act_export.directory, "fp16", tmp_path, act, specs, held_out_observations(specs, count=2)
    )
    assert result.bytes < 0.55 * act_export.path().stat().st_size
    assert result.parity.outputs[0].relative_l2 < 1e-2


def _prune_ffn(policy: nn.Module, widths: list[int]) -> None:
    """Keep the first `widths[i]` hidden units of each encoder/decoder feed-forward layer."""
    layers = list(policy.model.encoder.layers) + list(policy.model.decoder.layers)
    if policy.config.use_vae:
        layers += list(policy.model.vae_encoder.layers)
    for layer, width in zip(layers, widths * len(layers)):
        first, second = layer.linear1, layer.linear2
        layer.linear1 = nn.Linear(first.in_features, width)
        layer.linear1.weight.data, layer.linear1.bias.data = (
            first.weight.data[:width],
            first.bias.data[:width],
        )
        layer.linear2 = nn.Linear(width, second.out_features)
        layer.linear2.weight.data, layer.linear2.bias.data = second.weight.data[:, :width], second.bias.data


def test_pruned_act_round_trips_through_lerobot_from_pretrained(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    from tools.lerobot.export import held_out_observations, load_policy_module, observation_specs
    from tools.lerobot.imports import load_policy
    from tools.lerobot.save import save_lerobot_policy

    module = load_policy_module(lerobot_act_dir)
    _prune_ffn(module.policy, [48])
    held_out = held_out_observations(observation_specs(module))
    saved = save_lerobot_policy(module, tmp_path / "pruned", lerobot_act_dir, held_out)
    assert saved.config_overrides == {"dim_feedforward": 48}
    assert saved.parity.max_abs_error == 0.0
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "parity.json"} <= set(saved.files)
    reloaded = load_policy(tmp_path / "pruned", strict=True)
    assert reloaded.config.dim_feedforward == 48
    assert reloaded.model.encoder.layers[0].linear1.out_features == 48


def test_per_layer_pruned_widths_are_refused_with_the_tensors_named(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    from tools.lerobot.export import held_out_observations, load_policy_module, observation_specs
    from tools.lerobot.save import save_lerobot_policy

    module = load_policy_module(lerobot_act_dir)
    _prune_ffn(module.policy, [48, 32])
    with pytest.raises(OptimizationError, match="linear1"):
        save_lerobot_policy(
            module, tmp_path / "bad", lerobot_act_dir, held_out_observations(observation_specs(module))
        )


class _Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_a_graph_that_samples_inside_itself_is_refused_with_the_op_named(tmp_path: Path) -> None:
    from tools.lerobot.export import export_policy_onnx

    with pytest.raises(OptimizationError, match="random numbers") as caught:
        export_policy_onnx(_Noisy(), [InputSpec(name="x", shape=(1, 4))], tmp_path)
    assert caught.value.detail["operator"].startswith("Random")


def test_a_bf16_cast_act_is_stored_in_bf16_and_loads_back_with_its_values(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from tools.lerobot.export import held_out_observations, load_policy_module, observation_specs
    from tools.lerobot.save import save_lerobot_policy

    module = load_policy_module(lerobot_act_dir)
    module.policy.to(torch.bfloat16)
    saved = save_lerobot_policy(
        module, tmp_path / "bf16", lerobot_act_dir, held_out_observations(observation_specs(module), count=1)
    )
    assert saved.parity.max_abs_error == 0.0 and saved.parity.notes["loaded_as"] == "float32"
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values()} == {
        torch.bfloat16
    }
    original = (lerobot_act_dir / "model.safetensors").stat().st_size
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < 0.55 * original
