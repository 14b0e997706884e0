"""bitsandbytes LLM.int8() and 4-bit NF4/FP4: on this CPU for an eager module (the VLA) and through
transformers for a Hugging Face directory; sizes, fidelity, reload through the version store, determinism."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pydantic
import pytest
import torch

pytest.importorskip("bitsandbytes")

from tests.technique_support import load, min_cosine, store_reference  # noqa: E402
from tools.quantization.bnb import Bnb4BitConfig, BnbInt8Config, cpu_backend_reason  # noqa: E402
from tools.techniques import apply, parse_config, unavailable_reason  # noqa: E402
from tools.techniques.registry import get_technique  # noqa: E402
from tools.versions import VersionStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bnb_configs_round_trip_and_refuse_bad_values() -> None:
    for config in (BnbInt8Config(threshold=0.0), Bnb4BitConfig(quant_type="fp4", compute_dtype="bfloat16")):
        assert type(config).model_validate_json(config.model_dump_json()) == config
        assert parse_config(config.model_dump(mode="json")) == config
    for bad in ({"quant_type": "int3"}, {"compute_dtype": "float64"}, {"double_quant": "maybe"}):
        with pytest.raises(pydantic.ValidationError):
            Bnb4BitConfig(**bad)
    with pytest.raises(pydantic.ValidationError):
        BnbInt8Config(threshold=-1.0)


def test_both_kernels_run_on_this_cpu_so_bnb_is_listed_available() -> None:
    """The check quantizes and runs a tiny int8 and 4-bit layer; a build without CPU kernels names why."""
    if not torch.cuda.is_available():
        assert cpu_backend_reason() is None
    assert unavailable_reason(get_technique("bnb_int8")) is None
    assert unavailable_reason(get_technique("bnb_4bit")) is None


def test_int8_on_the_vla_is_4x_smaller_faithful_and_reloads(vla_job) -> None:
    result = apply(
        vla_job.store, vla_job.source.job_id, vla_job.source.id, BnbInt8Config(), data_dir=vla_job.data_dir
    )
    facts = result.facts
    assert result.version.format == "torch_pickled_module"
    assert facts["quantized_weight_compression"] > 3.9  # int8 rows + one float32 scale per row
    assert facts["skipped"] == {"action_head.mlp.6": "protected: the model's output layer"}
    model = load(vla_job.store, result.version, vla_job.data_dir)
    modules = dict(model.module.named_modules())
    assert type(modules["blocks.0.attn.q_proj"]).__name__ == "Linear8bitLt"
    assert modules["blocks.0.attn.q_proj"].weight.dtype == torch.int8
    assert type(modules["action_head.mlp.6"]) is torch.nn.Linear
    # row-wise int8 weights, float16 activations: measured cosine 0.99998
    assert min_cosine(vla_job.original, model, vla_job.inputs) > 0.999


@pytest.mark.parametrize(("quant_type", "bound"), [("nf4", 0.999), ("fp4", 0.99)])
def test_4bit_on_the_vla_is_7x_smaller_and_close(vla_job, quant_type: str, bound: float) -> None:
    config = Bnb4BitConfig(quant_type=quant_type)
    result = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    facts = result.facts
    # 4 bits a weight + an 8-bit absmax per 64 weights (double quant) -> 7.7x on the quantized layers
    assert facts["quantized_weight_compression"] > 7.0
    assert facts["skipped"]["proprio_encoder.0"].startswith("shape:")
    model = load(vla_job.store, result.version, vla_job.data_dir)
    assert type(dict(model.module.named_modules())["action_head.mlp.0"]).__name__ == "Linear4bit"
    # measured cosine on the pinned reference VLA (the same weights on every machine, README "Reference models"):
    # nf4 above 0.999, fp4 0.9947; fp4's evenly spaced levels fit these weights worse than nf4's quantiles
    assert min_cosine(vla_job.original, model, vla_job.inputs) > bound


def test_bnb_on_the_vla_is_deterministic_byte_for_byte(vla_job) -> None:
    config = Bnb4BitConfig(double_quant=False)
    first = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    second = apply(vla_job.store, vla_job.source.job_id, vla_job.source.id, config, data_dir=vla_job.data_dir)
    assert first.version.sha256 == second.version.sha256


@pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="transformers' bnb loader needs accelerate"
)
@pytest.mark.parametrize(("config", "bound"), [(BnbInt8Config(), 0.999), (Bnb4BitConfig(), 0.98)])
def test_a_hugging_face_directory_stays_one_and_reloads_quantized(
    version_store: VersionStore, reference_cache: Path, data_dir: Path, config, bound: float
) -> None:
    source = store_reference(version_store, "hf_llama", reference_cache, data_dir)
    result = apply(version_store, source.job_id, source.id, config, data_dir=data_dir)
    assert result.version.format == "hf_directory"
    stored = version_store.artifact_path(source.job_id, result.version.id)
    quantization = json.loads((stored / "config.json").read_text())["quantization_config"]
    assert quantization["load_in_8bit" if isinstance(config, BnbInt8Config) else "load_in_4bit"] is True
    assert quantization["llm_int8_skip_modules"] == ["lm_head"], "the output layer is protected"
    original, model = load(version_store, source, data_dir), load(version_store, result.version, data_dir)
    kinds = {type(module).__name__ for module in model.module.modules()}
    assert ("Linear8bitLt" if isinstance(config, BnbInt8Config) else "Linear4bit") in kinds
    assert result.facts["quantized_weight_compression"] > (3.5 if isinstance(config, BnbInt8Config) else 4.0)
    # random-weight tiny Llama logits; measured cosine int8 0.99996, nf4 0.9936
    inputs = [original.example_inputs(seed) for seed in range(2)]
    assert min_cosine(original, model, inputs) > bound
