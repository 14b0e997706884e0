"""torchao int8 weight-only, int8 dynamic and int1..8 weight-only quantization of the reference VLA: stored
bytes, protected layers, fidelity on held-out reaching inputs, reload through the version store, determinism.
"""

from __future__ import annotations

from types import SimpleNamespace

import pydantic
import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

pytest.importorskip("torchao")

from tests.technique_support import load, min_cosine  # noqa: E402
from tools.errors import OptimizationError  # noqa: E402
from tools.quantization.torchao_quant import (  # noqa: E402
    TorchaoInt8DynamicConfig,
    TorchaoInt8WeightOnlyConfig,
    TorchaoIntxWeightOnlyConfig,
    int8_gemm_is_exact,
)
from tools.techniques import apply, parse_config, unavailable_reason  # noqa: E402
from tools.techniques.registry import get_technique  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def quantize(vla_job: SimpleNamespace, config) -> tuple[SimpleNamespace, dict]:
    result = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    return load(vla_job.store, result.version, vla_job.data_dir), result


def fidelity(vla_job: SimpleNamespace, model) -> float:
    """The lowest output cosine of `model` to the original VLA's on the held-out inputs."""
    return min_cosine(vla_job.original, model, vla_job.inputs)


def test_torchao_configs_round_trip_and_refuse_bad_values() -> None:
    configs = [
        TorchaoInt8WeightOnlyConfig(group_size=64, protected=("action_head",)),
        TorchaoInt8DynamicConfig(activation_mapping="asymmetric"),
        TorchaoIntxWeightOnlyConfig(bits=3, group_size=None, mapping="asymmetric"),
    ]
    for config in configs:
        assert type(config).model_validate_json(config.model_dump_json()) == config
        assert parse_config(config.model_dump(mode="json")) == config
    for bad in ({"bits": 0}, {"bits": 9}, {"group_size": 0}, {"mapping": "log"}, {"protected": ("  ",)}):
        with pytest.raises(pydantic.ValidationError):
            TorchaoIntxWeightOnlyConfig(**bad)
    with pytest.raises(pydantic.ValidationError):
        TorchaoInt8WeightOnlyConfig(group_size=8)
    with pytest.raises(pydantic.ValidationError):
        TorchaoInt8DynamicConfig(activation_mapping="per-tensor")
    assert unavailable_reason(get_technique("torchao_int8_weight_only")) is None


def test_int8_weight_only_is_4x_smaller_protects_the_output_layer_and_reloads_faithfully(vla_job) -> None:
    model, result = quantize(vla_job, TorchaoInt8WeightOnlyConfig(protected=("vision_tower",)))
    facts = result.facts
    # int8 codes + one float32 scale per output row: 4 * in / (in + 4) -> 3.97 on the VLA's layer widths
    assert facts["quantized_weight_compression"] > 3.9
    assert facts["state_compression"] > 3.0  # the protected vision tower, norms and biases stay float32
    assert facts["skipped"]["action_head.mlp.6"] == "protected: the model's output layer"
    assert facts["skipped"]["vision_tower.patch_proj"].startswith("protected")
    modules = dict(model.module.named_modules())
    assert type(modules["action_head.mlp.6"].weight) is torch.nn.Parameter
    assert not is_traceable_wrapper_subclass(modules["vision_tower.stem.0.film"].weight)
    assert type(modules["action_head.mlp.0"].weight).__name__ == "Int8Tensor"
    # per-row int8 rounding error ~0.2% of a weight row's range; measured cosine 0.999997
    assert fidelity(vla_job, model) > 0.9999


def test_int8_dynamic_quantizes_weights_and_activations_and_stays_close(vla_job) -> None:
    model, result = quantize(vla_job, TorchaoInt8DynamicConfig())
    assert result.facts["quantized_weight_compression"] > 3.9
    weight = dict(model.module.named_modules())["blocks.0.mlp.fc1"].weight
    assert weight.act_quant_kwargs is not None, "activations are quantized at run time too"
    # Activations rounded to 8 bits per token as well: cosine 0.99996 where int8 matmuls are exact (AVX-512 VNNI).
    # Where they saturate (oneDNN without VNNI: AVX2, or ONEDNN_MAX_CPU_ISA=AVX2) the kernel, not the technique,
    # loses accuracy (0.989 measured): the technique says so, and the bound is the one this machine can keep.
    exact = int8_gemm_is_exact()
    assert result.facts["int8_gemm_exact"] is exact
    if exact:
        assert fidelity(vla_job, model) > 0.999
    else:
        assert "saturates" in result.facts["int8_gemm_note"] and fidelity(vla_job, model) > 0.95


def test_intx_4bit_groups_skip_layers_that_do_not_divide_and_lose_little(vla_job) -> None:
    model, result = quantize(vla_job, TorchaoIntxWeightOnlyConfig(bits=4, group_size=32))
    facts = result.facts
    assert facts["skipped"]["proprio_encoder.0"].startswith("shape: 2 input features")
    # codes stay one byte each (torchao's unpacked layout) and every 32 weights add a scale and a zero point
    assert 3.0 < facts["quantized_weight_compression"] < 4.0
    # 16 levels per group of 32: measured cosine 0.9993 on these inputs
    assert fidelity(vla_job, model) > 0.998
    coarse, _ = quantize(vla_job, TorchaoIntxWeightOnlyConfig(bits=2, group_size=32))
    assert fidelity(vla_job, coarse) < fidelity(vla_job, model), "fewer bits, larger error"


def test_torchao_quantization_is_deterministic_byte_for_byte(vla_job) -> None:
    config = TorchaoInt8WeightOnlyConfig(group_size=64, seed=7)
    first = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    second = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    assert first.version.sha256 == second.version.sha256
    assert first.facts == second.facts


def test_torchao_refuses_a_model_with_nothing_left_to_quantize(vla_job) -> None:
    with pytest.raises(OptimizationError, match="no Linear layer left"):
        apply(
            vla_job.store,
            vla_job.source.job_id,
            vla_job.source.id,
            TorchaoInt8WeightOnlyConfig(protected=("*",)),
            data_dir=vla_job.data_dir,
        )
