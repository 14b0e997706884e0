"""The technique contract, across the registry: every entry is complete, apply() stores or refuses cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

import pytest
import torch

from tests.technique_support import load, outputs, store_reference
from tools.errors import MissingDependencyError, NotFoundError, OptimizationError, ValidationError
from tools.techniques import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
    apply,
    get_technique,
    list_techniques,
    parse_config,
    register,
)
from tools.techniques import registry as registry_module
from tools.techniques import save_torch_module, techniques
from tools.versions import VersionStore

FAMILIES = {family for family in Family if family is not Family.EXPORT}


class ScaleWeightsConfig(TechniqueConfig):
    """Test technique: multiply every parameter by `factor`."""

    type: Literal["test_scale_weights"] = "test_scale_weights"
    factor: float = 1.0
    fail: bool = False
    escape: bool = False


class NeedsMissingConfig(TechniqueConfig):
    """Test technique whose backend is not installed."""

    type: Literal["test_needs_missing"] = "test_needs_missing"


def _spec(name: str, packages: tuple[str, ...] = ()) -> TechniqueSpec:
    return TechniqueSpec(
        name=name,
        family=Family.COMPRESSION,
        summary="test technique",
        needs=Needs(packages=packages, install_hint="pip install robopt-no-such-backend"),
        input_formats=("torch_pickled_module",),
        output_format="torch_pickled_module",
        runtimes=("torch-cpu",),
        precision="fp32",
        expected_effect="none (test)",
    )


def _scale(ctx: TechniqueContext, config: ScaleWeightsConfig) -> TechniqueProduct:
    module = ctx.require_module("test_scale_weights")
    ctx.progress(25, "scaling")
    if config.fail:
        (ctx.work_dir / "half-written.pt").write_bytes(b"partial")
        raise RuntimeError("backend exploded")
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(config.factor)
    ctx.progress(75, "saving")
    target = ctx.data_dir.parent if config.escape else ctx.work_dir
    path, fmt, options = save_torch_module(module, target, ctx.source.input_specs)
    return TechniqueProduct(path, fmt, options, facts={"factor": config.factor})


@pytest.fixture
def test_techniques() -> Iterator[None]:
    """Register the two test techniques for one test, then remove them."""
    register(ScaleWeightsConfig, _spec("test_scale_weights"))(_scale)
    register(NeedsMissingConfig, _spec("test_needs_missing", ("robopt_no_such_backend",)))(_scale)
    yield
    for name in ("test_scale_weights", "test_needs_missing"):
        registry_module._REGISTRY.pop(name, None)


@pytest.fixture
def vla_version(version_store: VersionStore, reference_cache: Path, data_dir: Path):
    return store_reference(version_store, "vla", reference_cache, data_dir)


@pytest.mark.parametrize("name", sorted(techniques()))
def test_every_registered_technique_is_complete(name: str) -> None:
    entry = get_technique(name)
    assert entry.config_type.model_fields["type"].default == entry.spec.name == name
    assert callable(entry.handler)
    assert entry.spec.input_formats and entry.spec.runtimes and entry.spec.expected_effect
    schema = entry.config_type.model_json_schema()
    assert schema["properties"]["type"]["const"] == name
    try:
        config = entry.config_type()
    except Exception:  # noqa: BLE001 - a config with required fields has no default instance
        return
    assert type(config).model_validate_json(config.model_dump_json()) == config
    assert parse_config(config.model_dump(mode="json")) == config


def test_every_family_registers_techniques() -> None:
    families = {entry.spec.family for entry in techniques().values()}
    assert FAMILIES <= families, f"families without techniques: {FAMILIES - families}"


def test_unknown_technique_lists_the_registered_ones() -> None:
    with pytest.raises(NotFoundError) as caught:
        parse_config({"type": "quantum_annealing"})
    assert "quantum_annealing" in str(caught.value)
    assert all(name in str(caught.value) for name in list(techniques())[:3])


def test_parse_config_names_the_bad_values(test_techniques: None) -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        parse_config("{type: ")
    with pytest.raises(ValidationError, match="'type' field"):
        parse_config({"factor": 2})
    with pytest.raises(ValidationError, match="factor"):
        parse_config({"type": "test_scale_weights", "factor": "big"})
    with pytest.raises(ValidationError, match="surprise"):
        parse_config({"type": "test_scale_weights", "surprise": 1})
    assert parse_config('{"type": "test_scale_weights", "factor": 2}') == ScaleWeightsConfig(factor=2.0)


def test_apply_stores_a_new_version_with_lineage_and_progress(
    test_techniques: None, version_store: VersionStore, data_dir: Path, vla_version
) -> None:
    seen: list[float] = []
    result = apply(
        version_store,
        vla_version.job_id,
        vla_version.id,
        ScaleWeightsConfig(factor=0.5),
        data_dir=data_dir,
        progress=lambda percent, message: seen.append(percent),
    )
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen) and {25, 75} <= set(seen)
    assert result.version.parent == vla_version.id
    assert result.version.params["factor"] == 0.5
    assert result.facts == {"factor": 0.5}
    assert result.version.metrics["facts"] == {"factor": 0.5}
    before = load(version_store, vla_version, data_dir).module
    after = load(version_store, result.version, data_dir).module
    first = next(before.parameters())
    assert torch.allclose(next(after.parameters()), first * 0.5)
    assert not any((data_dir / "work").rglob("*.pt")), "the work folder is cleaned up"


def test_a_failing_technique_leaves_no_version_and_no_files(
    test_techniques: None, version_store: VersionStore, data_dir: Path, vla_version
) -> None:
    with pytest.raises(OptimizationError, match="backend exploded"):
        apply(
            version_store,
            vla_version.job_id,
            vla_version.id,
            ScaleWeightsConfig(fail=True),
            data_dir=data_dir,
        )
    assert [v.id for v in version_store.list(vla_version.job_id)] == [vla_version.id]
    assert not any((data_dir / "work").rglob("*.pt"))


def test_an_artifact_outside_the_work_folder_is_refused(
    test_techniques: None, version_store: VersionStore, data_dir: Path, vla_version
) -> None:
    with pytest.raises(OptimizationError, match="work folder"):
        apply(
            version_store,
            vla_version.job_id,
            vla_version.id,
            ScaleWeightsConfig(escape=True),
            data_dir=data_dir,
        )
    assert len(version_store.list(vla_version.job_id)) == 1
    (data_dir.parent / "model.pt").unlink(missing_ok=True)


def test_a_missing_backend_is_listed_unavailable_and_refused(
    test_techniques: None, version_store: VersionStore, data_dir: Path, vla_version
) -> None:
    info = {item.spec.name: item for item in list_techniques()}
    assert info["test_scale_weights"].available
    missing = info["test_needs_missing"]
    assert not missing.available and "robopt_no_such_backend" in (missing.reason or "")
    with pytest.raises(MissingDependencyError, match="robopt_no_such_backend"):
        apply(version_store, vla_version.job_id, vla_version.id, NeedsMissingConfig(), data_dir=data_dir)
    assert len(version_store.list(vla_version.job_id)) == 1


def test_the_original_is_stored_self_contained(
    version_store: VersionStore, data_dir: Path, vla_version, built_vla: Path
) -> None:
    """A state dict needs code and a config from elsewhere; the stored original does not."""
    assert vla_version.format == "torch_pickled_module"
    assert vla_version.metrics["original_format"] == "torch_state_dict"
    model = load(version_store, vla_version, data_dir)
    inputs = model.example_inputs(seed=3)
    from tools.reference import load_reference_module

    reference = load_reference_module(built_vla)
    with torch.inference_mode():
        expected = reference(**inputs)
    assert torch.equal(outputs(model, inputs)[0], expected)


def test_user_data_becomes_calibration_batches_with_labels() -> None:
    from tools.errors import InputSpecError
    from tools.inputs import InputSpec
    from tools.techniques import calibration_from_data

    specs = [InputSpec(name="state", shape=(1, 4), dtype="float32")]
    data = {"state": torch.arange(40.0).reshape(10, 4), "action": torch.arange(10.0).reshape(10, 1)}
    calibration = calibration_from_data(data, specs, label_key="action", batch_size=4)
    assert [batch["state"].shape[0] for batch in calibration.batches] == [4, 4, 2]
    assert torch.equal(calibration.labels[2], torch.tensor([[8.0], [9.0]]))
    assert calibration.source == "user"
    with pytest.raises(InputSpecError, match="'proprio'"):
        calibration_from_data(data, specs + [InputSpec(name="proprio", shape=(1, 2), dtype="float32")])
    with pytest.raises(InputSpecError, match="'reward'"):
        calibration_from_data(data, specs, label_key="reward")
    with pytest.raises(InputSpecError, match="expects"):
        calibration_from_data({"state": torch.zeros(10, 5)}, specs)


def test_a_source_format_the_technique_does_not_take_is_refused_before_work(
    test_techniques: None, version_store: VersionStore, data_dir: Path, built_vla: Path
) -> None:
    from tools.techniques import store_original

    onnx_version = store_original(version_store, "onnx-job", built_vla / "model.onnx", None, data_dir)
    assert onnx_version.format == "onnx"
    seen: list[float] = []
    with pytest.raises(
        OptimizationError, match="transforms eager PyTorch modules, but version v0001 is an ONNX"
    ):
        apply(
            version_store,
            "onnx-job",
            onnx_version.id,
            ScaleWeightsConfig(),
            data_dir=data_dir,
            progress=lambda percent, message: seen.append(percent),
        )
    assert seen == [] and len(version_store.list("onnx-job")) == 1
