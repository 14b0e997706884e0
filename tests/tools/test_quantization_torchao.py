"""torchao int8 weight-only, int8 dynamic and int1..8 weight-only quantization of the reference VLA: stored
bytes, protected layers, fidelity on held-out reaching inputs, reload through the version store, determinism.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pydantic
import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

pytest.importorskip("torchao")

from tests.technique_support import load, outputs, store_reference  # noqa: E402
from tools.errors import OptimizationError  # noqa: E402
from tools.quantization.torchao_quant import (  # noqa: E402
    TorchaoInt8DynamicConfig,
    TorchaoInt8WeightOnlyConfig,
    TorchaoIntxWeightOnlyConfig,
)
from tools.reference.calibration import reaching_calibration  # noqa: E402
from tools.techniques import apply, output_agreement, parse_config, unavailable_reason  # noqa: E402
from tools.techniques.registry import get_technique  # noqa: E402
from tools.versions import VersionStore  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these models are small, and on a busy 2-core test machine thread hand-offs cost
    more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vla(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> SimpleNamespace:
    """The reference VLA stored once for this module, with held-out reaching inputs."""
    data_dir = tmp_path_factory.mktemp("torchao") / "data"
    data_dir.mkdir()
    store = VersionStore(data_dir / "versions")
    source = store_reference(store, "vla", reference_cache, data_dir)
    original = load(store, source, data_dir)
    held_out = reaching_calibration(2, 16, seed=7000, with_labels=False).batches
    return SimpleNamespace(store=store, data_dir=data_dir, source=source, original=original, inputs=held_out)


def quantize(vla: SimpleNamespace, config) -> tuple[SimpleNamespace, dict]:
    result = apply(vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir)
    return load(vla.store, result.version, vla.data_dir), result


def min_cosine(vla: SimpleNamespace, model) -> float:
    return min(
        agreement.cosine
        for batch in vla.inputs
        for agreement in output_agreement(outputs(vla.original, batch), outputs(model, batch))
    )


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


def test_int8_weight_only_is_4x_smaller_protects_the_output_layer_and_reloads_faithfully(vla) -> None:
    model, result = quantize(vla, TorchaoInt8WeightOnlyConfig(protected=("vision_tower",)))
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
    assert min_cosine(vla, model) > 0.9999


def test_int8_dynamic_quantizes_weights_and_activations_and_stays_close(vla) -> None:
    model, result = quantize(vla, TorchaoInt8DynamicConfig())
    assert result.facts["quantized_weight_compression"] > 3.9
    weight = dict(model.module.named_modules())["blocks.0.mlp.fc1"].weight
    assert weight.act_quant_kwargs is not None, "activations are quantized at run time too"
    # activations rounded to 8 bits per token as well: measured cosine 0.99996
    assert min_cosine(vla, model) > 0.999


def test_intx_4bit_groups_skip_layers_that_do_not_divide_and_lose_little(vla) -> None:
    model, result = quantize(vla, TorchaoIntxWeightOnlyConfig(bits=4, group_size=32))
    facts = result.facts
    assert facts["skipped"]["proprio_encoder.0"].startswith("shape: 2 input features")
    # codes stay one byte each (torchao's unpacked layout) and every 32 weights add a scale and a zero point
    assert 3.0 < facts["quantized_weight_compression"] < 4.0
    # 16 levels per group of 32: measured cosine 0.9993 on these inputs
    assert min_cosine(vla, model) > 0.998
    coarse, _ = quantize(vla, TorchaoIntxWeightOnlyConfig(bits=2, group_size=32))
    assert min_cosine(vla, coarse) < min_cosine(vla, model), "fewer bits, larger error"


def test_torchao_quantization_is_deterministic_byte_for_byte(vla) -> None:
    config = TorchaoInt8WeightOnlyConfig(group_size=64, seed=7)
    first = apply(vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir)
    second = apply(vla.store, vla.source.job_id, vla.source.id, config, data_dir=vla.data_dir)
    assert first.version.sha256 == second.version.sha256
    assert first.facts == second.facts


def test_torchao_refuses_a_model_with_nothing_left_to_quantize(vla) -> None:
    with pytest.raises(OptimizationError, match="no Linear layer left"):
        apply(
            vla.store,
            vla.source.job_id,
            vla.source.id,
            TorchaoInt8WeightOnlyConfig(protected=("*",)),
            data_dir=vla.data_dir,
        )
