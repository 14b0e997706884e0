"""Built reference policies: the trained VLA really solves the task, the cache works, every export matches."""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.inputs import InputSpec, synthesize_inputs
from tools.reference import build_reference, export_reference, load_reference_module, read_reference_metadata
from tools.reference.conv_policy import SINGLE_TARGET_TASK
from tools.reference.exports import ROBOPT_JSON
from tools.reference.reaching import make_dataset, random_policy, rollout_success
from tools.reference.training import action_errors, torch_policy

pytestmark = pytest.mark.integration

BUILDS = ["built_vla", "built_conv_policy"]


def _specs(metadata: dict) -> list[InputSpec]:
    return [InputSpec.model_validate(spec) for spec in metadata["input_specs"]]


def _batch_inputs(metadata: dict, batch: int = 3) -> dict[str, torch.Tensor]:
    """Stack `batch` different synthetic samples, to check the dynamic batch axis too."""
    samples = [synthesize_inputs(_specs(metadata), seed=seed) for seed in range(batch)]
    return {name: torch.cat([sample[name] for sample in samples]) for name in samples[0]}


def test_trained_vla_succeeds_closed_loop_far_above_chance(built_vla: Path) -> None:
    metrics = read_reference_metadata(built_vla)["metrics"]
    assert metrics["closed_loop"]["episodes"] >= 50
    assert metrics["closed_loop"]["success_rate"] >= 0.8
    assert metrics["random_policy"]["success_rate"] <= 0.3
    assert metrics["untrained_policy"]["success_rate"] <= 0.3
    assert metrics["closed_loop"]["ci95"][0] > metrics["random_policy"]["ci95"][1] + 0.3
    assert metrics["action_mse"] < 0.25 * min(metrics["mean_action_mse"], metrics["zero_action_mse"])

    # The recorded numbers are real: the reloaded weights reproduce them on fresh episodes and samples.
    model = load_reference_module(built_vla)
    fresh = rollout_success(torch_policy(model), episodes=50, seed=777)
    chance = rollout_success(random_policy(seed=1), episodes=50, seed=777)
    assert fresh.success_rate >= 0.8 and fresh.success_rate > chance.success_rate + 0.5
    errors = action_errors(model, make_dataset(256, seed=4242))
    assert errors["action_mse"] < 0.25 * errors["mean_action_mse"]


def test_trained_conv_policy_beats_chance(built_conv_policy: Path) -> None:
    metrics = read_reference_metadata(built_conv_policy)["metrics"]
    assert metrics["closed_loop"]["success_rate"] >= 0.6
    assert metrics["closed_loop"]["success_rate"] > metrics["random_policy"]["success_rate"] + 0.4
    assert metrics["action_mse"] < 0.5 * metrics["mean_action_mse"]


def test_second_build_hits_the_cache(reference_cache: Path, built_vla: Path) -> None:
    def files() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(reference_cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in reference_cache.rglob("*")
            if p.is_file()
        }

    before = files()
    assert build_reference("vla", reference_cache) == built_vla
    assert files() == before  # a hit rebuilds, rewrites and adds nothing
    metadata = read_reference_metadata(built_vla)
    assert metadata["seed"] == 0 and len(metadata["fingerprint"]) == 16
    assert 5_000_000 <= metadata["parameters"] <= 20_000_000
    assert not list(reference_cache.glob(".tmp-*"))


@pytest.mark.parametrize("build", BUILDS)
def test_every_export_reloads_and_matches(build: str, request: pytest.FixtureRequest) -> None:
    import onnxruntime
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory: Path = request.getfixturevalue(build)
    metadata = read_reference_metadata(directory)
    files = {name: directory / file_name for name, file_name in metadata["formats"].items()}
    inputs = _batch_inputs(metadata)
    original = load_reference_module(directory)
    with torch.no_grad():
        expected = original(**inputs)

    module_name, _, class_name = metadata["architecture"].partition(":")
    config = json.loads((directory / metadata["config_file"]).read_text())
    rebuilt = getattr(importlib.import_module(module_name), class_name)(**config)
    rebuilt.load_state_dict(torch.load(files["torch_state_dict"], map_location="cpu", weights_only=True))
    from_safetensors = getattr(importlib.import_module(module_name), class_name)(**config)
    from_safetensors.load_state_dict(load_file(str(files["safetensors"])))
    extra = {ROBOPT_JSON: ""}
    scripted = torch.jit.load(str(files["torchscript"]), _extra_files=extra)
    pickled = torch.load(files["torch_pickled_module"], map_location="cpu", weights_only=False)
    with torch.no_grad():
        outputs = {
            "torch_state_dict": rebuilt.eval()(**inputs),
            "safetensors": from_safetensors.eval()(**inputs),
            "torchscript": scripted(**inputs),
            "torch_pickled_module": pickled.eval()(**inputs),
        }
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == [spec.name for spec in _specs(metadata)]
    assert [item.name for item in session.get_outputs()] == ["actions"]
    outputs["onnx"] = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    assert set(outputs) == set(files)
    for name, output in outputs.items():
        assert output.shape == expected.shape, name
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-4, msg=f"{name} differs")

    # Each self-describing format carries the same description: architecture, config, input specs.
    described = json.loads(extra[ROBOPT_JSON])
    with safe_open(str(files["safetensors"]), framework="pt") as handle:
        assert json.loads(handle.metadata()[ROBOPT_JSON]) == described
    import onnx

    onnx_meta = {
        p.key: p.value for p in onnx.load(str(files["onnx"]), load_external_data=False).metadata_props
    }
    assert json.loads(onnx_meta[ROBOPT_JSON]) == described
    assert described["architecture"] == metadata["architecture"] and described["config"] == config
    assert described["input_specs"] == metadata["input_specs"]
    assert zipfile.is_zipfile(files["torchscript"]) and zipfile.is_zipfile(files["torch_state_dict"])


def test_closed_loop_with_the_onnx_export(built_conv_policy: Path) -> None:
    import onnxruntime

    metadata = read_reference_metadata(built_conv_policy)
    session = onnxruntime.InferenceSession(str(built_conv_policy / metadata["formats"]["onnx"]))
    names = [item.name for item in session.get_inputs()]

    def policy(observation: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: observation[name] for name in names})[0]

    torch_result = rollout_success(
        torch_policy(load_reference_module(built_conv_policy), tuple(names)),
        episodes=30,
        config=SINGLE_TARGET_TASK,
    )
    onnx_result = rollout_success(policy, episodes=30, config=SINGLE_TARGET_TASK)
    assert abs(onnx_result.success_rate - torch_result.success_rate) <= 0.05


def test_export_reference_rewrites_every_format(built_conv_policy: Path, tmp_path: Path) -> None:
    import onnxruntime

    exported = export_reference(built_conv_policy, tmp_path / "again")
    paths = exported.as_dict()
    assert set(paths) == {
        "torchscript",
        "torch_state_dict",
        "safetensors",
        "torch_pickled_module",
        "onnx",
        "config",
    }
    assert all(path.is_file() and path.parent == tmp_path / "again" for path in paths.values())
    assert exported.architecture == "tools.reference.conv_policy:ConvPolicy"
    inputs = synthesize_inputs(exported.input_specs, seed=2)
    session = onnxruntime.InferenceSession(str(paths["onnx"]))
    with torch.no_grad():
        expected = load_reference_module(built_conv_policy)(**inputs).numpy()
    np.testing.assert_allclose(
        session.run(None, {k: v.numpy() for k, v in inputs.items()})[0], expected, atol=1e-5
    )
