"""ONNX export: parity with PyTorch on real inputs, embedded metadata, dynamic batch, offline optimization,
determinism, and failures that name the operator the exporter cannot convert."""

from __future__ import annotations

from pathlib import Path

import onnx
import pydantic
import pytest
import torch

from tests.model_zoo import TinyMLP
from tests.technique_support import load, outputs, store_reference
from tools.compression.onnx_export import (
    OnnxExportConfig,
    export_to_onnx,
    optimize_onnx_offline,
    robopt_metadata,
    unsupported_operator,
)
from tools.errors import OptimizationError
from tools.inputs import InputSpec
from tools.intake import LoadOptions
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, output_agreement, parse_config, store_original
from tools.versions import VersionStore


class EighPolicy(torch.nn.Module):
    """Uses an eigendecomposition, which the ONNX exporter cannot convert."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        hidden = self.proj(state).unsqueeze(-1)
        return torch.linalg.eigh(hidden @ hidden.transpose(-1, -2))[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[VersionStore, Path]:
    """A version store shared by this module's tests (the VLA is stored and exported once)."""
    data_dir = tmp_path_factory.mktemp("onnx_export") / "data"
    data_dir.mkdir()
    return VersionStore(data_dir / "versions"), data_dir


@pytest.fixture(scope="module")
def vla_export(workspace: tuple[VersionStore, Path], reference_cache: Path) -> dict:
    """The reference VLA stored as a PyTorch version and exported once with the default config."""
    store, data_dir = workspace
    source = store_reference(store, "vla", reference_cache, data_dir)
    calibration = reaching_calibration(4, 8)
    exported = apply(
        store, source.job_id, source.id, OnnxExportConfig(), data_dir=data_dir, calibration=calibration
    )
    return {"source": source, "exported": exported, "calibration": calibration}


@pytest.fixture(scope="module")
def tiny_mlp(workspace: tuple[VersionStore, Path], tmp_path_factory: pytest.TempPathFactory) -> object:
    """A TinyMLP stored as a trusted pickled module (fast to export)."""
    store, data_dir = workspace
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlp") / "mlp.pt"
    torch.save(TinyMLP().eval(), path)
    options = LoadOptions(trust_pickle=True, trusted_packages=("tests",))
    return store_original(store, "tiny_mlp", path, options, data_dir)


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = OnnxExportConfig(opset=20, dynamic_batch=False, graph_optimization_level="all", parity_inputs=2)
    assert OnnxExportConfig.model_validate_json(config.model_dump_json()) == config
    assert parse_config({"type": "onnx_export", "opset": 17}) == OnnxExportConfig(opset=17)
    for bad in (
        {"opset": 11},
        {"graph_optimization_level": "turbo"},
        {"parity_inputs": 0},
        {"min_cosine": 1.5},
    ):
        with pytest.raises(pydantic.ValidationError):
            OnnxExportConfig(**bad)


def test_vla_export_matches_pytorch_and_carries_metadata(vla_export: dict, workspace: tuple) -> None:
    store, data_dir = workspace
    facts = vla_export["exported"].facts
    assert facts["parity"]["max_abs_error"] <= 1e-3 and facts["parity"]["min_cosine"] >= 0.9999
    assert facts["parity"]["inputs_source"] == "reference-task" and facts["parity"]["batches"] == 4
    onnx_version = load(store, vla_export["exported"].version, data_dir)
    torch_version = load(store, vla_export["source"], data_dir)
    assert [i.name for i in onnx_version.session.get_inputs()] == ["pixel_values", "input_ids", "proprio"]
    # Independently of the facts: the stored graph computes the PyTorch actions on held-out task inputs.
    for batch in reaching_calibration(2, 5, seed=77, with_labels=False).batches:  # batch 5: a dynamic axis
        (agreement,) = output_agreement(outputs(torch_version, batch), outputs(onnx_version, batch))
        assert agreement.max_abs_error < 1e-4 and agreement.cosine > 0.99999
    metadata = robopt_metadata(onnx.load(str(onnx_version.path)))
    assert (
        metadata["architecture"].endswith("TinyVLA") and metadata["source_version"] == vla_export["source"].id
    )
    assert [spec["name"] for spec in metadata["input_specs"]] == ["pixel_values", "input_ids", "proprio"]
    assert metadata["opset"] == 18 and facts["opset"] == 18


def test_conv_policy_and_hf_llama_export_with_parity(
    workspace: tuple[VersionStore, Path], reference_cache: Path
) -> None:
    store, data_dir = workspace
    for name, calibration in (("conv_policy", reaching_calibration(2, 4)), ("hf_llama", None)):
        source = store_reference(store, name, reference_cache, data_dir)
        result = apply(
            store,
            source.job_id,
            source.id,
            OnnxExportConfig(parity_inputs=2),
            data_dir=data_dir,
            calibration=calibration,
        )
        assert result.facts["parity"]["max_abs_error"] <= 1e-3, name
        assert result.facts["parity"]["min_cosine"] >= 0.9999, name
    assert result.facts["outputs"] == ["logits"]  # the Llama's KV cache is not exported (use_cache=False)


def test_export_is_deterministic_and_optimizes_offline(workspace: tuple, tiny_mlp: object) -> None:
    store, data_dir = workspace
    first = apply(store, tiny_mlp.job_id, tiny_mlp.id, OnnxExportConfig(), data_dir=data_dir)
    second = apply(store, tiny_mlp.job_id, tiny_mlp.id, OnnxExportConfig(), data_dir=data_dir)
    assert first.version.sha256 == second.version.sha256
    optimized = apply(
        store,
        tiny_mlp.job_id,
        tiny_mlp.id,
        OnnxExportConfig(save_optimized=True, graph_optimization_level="extended"),
        data_dir=data_dir,
    )
    assert optimized.facts["optimized_offline"] and optimized.facts["parity"]["max_abs_error"] <= 1e-3
    # ORT fused Gemm+Relu into one node: the stored graph really is the optimized one.
    assert "FusedGemm" in optimized.facts["op_types"] and "FusedGemm" not in first.facts["op_types"]
    assert robopt_metadata(onnx.load(str(load(store, optimized.version, data_dir).path)))["technique"]


def test_optimize_onnx_offline_keeps_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyMLP().eval()
    specs = TinyMLP.input_specs()
    path = export_to_onnx(model, specs, tmp_path / "mlp.onnx", metadata={"note": "kept"})
    optimized = optimize_onnx_offline(path, tmp_path / "mlp_opt.onnx", "all")
    assert robopt_metadata(onnx.load(str(optimized))) == {"note": "kept", "opset": 18}
    from tools.compression.onnx_export import cpu_session, run_session

    state = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(state)
    for graph in (path, optimized):
        (got,) = run_session(cpu_session(graph, "disabled"), {"state": state})
        assert torch.allclose(got, expected, atol=1e-5)


def test_parity_failure_is_refused(workspace: tuple, tiny_mlp: object) -> None:
    store, data_dir = workspace
    with pytest.raises(OptimizationError, match="does not match PyTorch") as error:
        apply(
            store,
            tiny_mlp.job_id,
            tiny_mlp.id,
            OnnxExportConfig(max_abs_error=1e-12, min_cosine=1.0),
            data_dir=data_dir,
        )
    assert error.value.detail["parity"]["outputs"]


def test_failed_export_names_the_operator(workspace: tuple, tmp_path: Path) -> None:
    store, data_dir = workspace
    path = tmp_path / "eigh.pt"
    torch.save(EighPolicy().eval(), path)
    options = LoadOptions(
        trust_pickle=True, trusted_packages=("tests",), input_specs=(InputSpec(name="state", shape=(1, 4)),)
    )
    source = store_original(store, "eigh", path, options, data_dir)
    with pytest.raises(
        OptimizationError, match=r"operator aten\._linalg_eigh\.default is not supported"
    ) as error:
        apply(store, source.job_id, source.id, OnnxExportConfig(), data_dir=data_dir)
    assert error.value.detail["operator"] == "aten._linalg_eigh.default"
    assert [version.id for version in store.list("eigh")] == [source.id]  # nothing half-written was stored


def test_custom_op_without_translation_is_named(tmp_path: Path) -> None:
    @torch.library.custom_op("robopt_test::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @mystery.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    class Mystery(torch.nn.Module):
        def forward(self, state: torch.Tensor) -> torch.Tensor:
            return mystery(state)

    with pytest.raises(OptimizationError, match=r"robopt_test\.mystery\.default"):
        export_to_onnx(Mystery(), [InputSpec(name="state", shape=(1, 4))], tmp_path / "m.onnx")
    assert unsupported_operator("call_function[target=torch.ops.aten.foo.default](args") == "aten.foo.default"
    assert unsupported_operator("everything went fine") is None


def test_refuses_sources_that_are_not_eager_pytorch(workspace: tuple, zoo: dict[str, Path]) -> None:
    store, data_dir = workspace
    onnx_source = store_original(store, "tiny_onnx", zoo["onnx"], None, data_dir)
    with pytest.raises(OptimizationError, match="eager PyTorch"):
        apply(store, onnx_source.job_id, onnx_source.id, OnnxExportConfig(), data_dir=data_dir)
