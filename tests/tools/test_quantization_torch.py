"""Float16 / bfloat16 casts of PyTorch models: half the bytes, norms and protected modules in float32, same
interface (float32 in, float32 out), fidelity to float32 on held-out reaching inputs, and determinism."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch

from tests.technique_support import (
    held_out_inputs,
    load,
    min_cosine,
    outputs,
    store_reference,
    weight_rounding_cosine,
)
from tools.errors import OptimizationError, ValidationError
from tools.quantization.torch_cast import TorchBf16CastConfig, TorchFp16CastConfig, is_norm_layer
from tools.techniques import apply, parse_config, store_original
from tools.techniques.selection import is_protected
from tools.versions import VersionStore

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("config_type", [TorchFp16CastConfig, TorchBf16CastConfig])
def test_cast_configs_round_trip_and_refuse_bad_values(config_type: type) -> None:
    config = config_type(keep_float32=("action_head",), keep_norm_layers=False, seed=3)
    assert config_type.model_validate_json(config.model_dump_json()) == config
    assert parse_config(config.model_dump(mode="json")) == config
    with pytest.raises(pydantic.ValidationError, match="non-empty glob"):
        config_type(keep_float32=("",))
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        config_type(surprise=1)
    with pytest.raises(ValidationError, match="keep_norm_layers"):
        parse_config({"type": config.type, "keep_norm_layers": "sometimes"})


def test_name_patterns_match_a_module_and_everything_inside_it() -> None:
    assert is_protected("action_head.mlp.6", ("action_head",))
    assert is_protected("model.layers.0.input_layernorm", ("*layernorm",))
    assert not is_protected("action_headless.fc", ("action_head",))
    assert is_norm_layer(torch.nn.BatchNorm2d(4)) and not is_norm_layer(torch.nn.Linear(2, 2))


def test_fp16_cast_halves_the_vla_keeps_norms_and_the_head_float32_and_stays_faithful(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    source = store_reference(version_store, "vla", reference_cache, data_dir)
    config = TorchFp16CastConfig(keep_float32=("action_head.mlp.6",))
    result = apply(version_store, source.job_id, source.id, config, data_dir=data_dir)
    facts = result.facts
    assert result.version.format == "torch_pickled_module"
    assert facts["state_bytes_before"]["float32"] == facts["state_bytes_total_before"] - 32  # int64 counter
    assert 1.9 < facts["state_compression"] < 2.0, facts["state_compression"]
    assert facts["unmatched_patterns"] == []

    original, cast = load(version_store, source, data_dir), load(version_store, result.version, data_dir)
    modules = dict(cast.module.named_modules())
    for name, module in modules.items():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        expected = torch.float32 if is_norm_layer(module) or name == "action_head.mlp.6" else torch.float16
        assert {p.dtype for p in own} == {expected}, name
    assert "vision_tower.stem.0.norm" in facts["modules_kept_float32"]

    inputs = held_out_inputs(original.input_specs)
    with torch.inference_mode():
        assert cast.module(**inputs[0]).dtype == torch.float32, "the interface stays float32"
    # fp16 keeps 11 significant bits (relative rounding 2^-11 ~ 5e-4); measured cosine 0.999999+
    assert min_cosine(original, cast, inputs) > 0.9999


def test_bf16_cast_of_hf_llama_and_conv_policy_runs_and_stays_close(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    for name in ("hf_llama", "conv_policy"):
        source = store_reference(version_store, name, reference_cache, data_dir)
        result = apply(version_store, source.job_id, source.id, TorchBf16CastConfig(), data_dir=data_dir)
        original, cast = load(version_store, source, data_dir), load(version_store, result.version, data_dir)
        assert "bfloat16" in result.facts["state_bytes_after"]
        assert result.facts["state_compression"] > 1.9
        norms = [m for m in cast.module.modules() if is_norm_layer(m)]
        assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
        inputs = (
            [original.example_inputs(seed) for seed in range(2)]
            if name == "hf_llama"
            else held_out_inputs(original.input_specs)
        )
        # bf16 keeps 8 significant bits: what that costs depends on the model, so the cast is compared with the
        # same model whose weights alone are rounded to bf16 (math in float32). The cast also rounds activations:
        # measured (1 - cosine) 7.5x the weights-only baseline's on the conv policy, 3.5x on hf_llama. fp8-like
        # rounding (4 fewer bits) would cost about 256x; the bound allows 30x.
        baseline = weight_rounding_cosine(original, torch.bfloat16, inputs)
        cosine = min_cosine(original, cast, inputs)
        print(f"\n{name}: bf16 cast 1-cosine {1 - cosine:.2e}, weights-only bf16 rounding {1 - baseline:.2e}")
        assert 1 - cosine <= 30 * max(1 - baseline, 1e-6), (name, cosine, baseline)


def test_cast_is_deterministic_and_reloads_identically(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    source = store_reference(version_store, "conv_policy", reference_cache, data_dir)
    first, second = (
        apply(version_store, source.job_id, source.id, TorchFp16CastConfig(seed=5), data_dir=data_dir)
        for _ in range(2)
    )
    a, b = load(version_store, first.version, data_dir), load(version_store, second.version, data_dir)
    state_a, state_b = a.module.state_dict(), b.module.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    batch = held_out_inputs(a.input_specs, batches=1)[0]
    assert all(torch.equal(x, y) for x, y in zip(outputs(a, batch), outputs(b, batch)))


def test_cast_refuses_what_it_cannot_cast(
    version_store: VersionStore, reference_cache: Path, data_dir: Path, built_vla: Path
) -> None:
    source = store_reference(version_store, "conv_policy", reference_cache, data_dir)
    with pytest.raises(OptimizationError, match="no floating parameter is left"):
        apply(
            version_store,
            source.job_id,
            source.id,
            TorchFp16CastConfig(keep_float32=("*",)),
            data_dir=data_dir,
        )
    scripted = store_original(
        version_store, "scripted", built_vla / "model_torchscript.pt", data_dir=data_dir
    )
    with pytest.raises(OptimizationError, match="TorchScript"):
        apply(version_store, scripted.job_id, scripted.id, TorchFp16CastConfig(), data_dir=data_dir)
    assert len(version_store.list(source.job_id)) == 1, "a refused cast stores nothing"
