"""Diffusion Policy deploys as encoder + denoiser ONNX and a numpy scheduler loop that reproduces torch's actions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def diffusion(lerobot_diffusion_dir: Path) -> Any:
    from tools.lerobot.export import load_policy_module

    return load_policy_module(lerobot_diffusion_dir, seed=3)


@pytest.fixture(scope="module")
def diffusion_export(diffusion: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tools.lerobot.diffusion_export import export_diffusion_onnx
    from tools.lerobot.export import held_out_observations, observation_specs

    # the zoo's policy runs 10 DDPM steps; parity is also checked at 4; one held-out batch of 3
    held_out = held_out_observations(observation_specs(diffusion), count=1, batch_sizes=(3,))
    return export_diffusion_onnx(
        diffusion, tmp_path_factory.mktemp("diffusion_onnx"), held_out=held_out, parity_steps=(None, 4)
    )


def test_runner_reproduces_torch_actions_with_the_same_noise_for_two_step_counts(
    diffusion: Any, diffusion_export: Any
) -> None:
    parity = diffusion_export.parity
    assert parity.notes["num_inference_steps"] == [10, 4]
    assert parity.held_out and parity.batches == 2 and parity.rows == 6
    assert parity.max_abs_error < 1e-4 and parity.min_cosine > 0.9999
    assert json.loads((diffusion_export.directory / "export.json").read_text())["scheduler"] == "DDPM"


def test_the_noise_is_an_input_that_decides_the_actions(diffusion: Any, diffusion_export: Any) -> None:
    from tools.lerobot.diffusion_export import runner_inputs
    from tools.lerobot.sampler import DiffusionOnnxRunner

    runner = DiffusionOnnxRunner(diffusion_export.directory)
    generator = torch.Generator().manual_seed(5)
    raw = {n: torch.rand(s, generator=generator) for n, s in diffusion.input_shapes(2).items()}
    noise, step_noise = runner_inputs(diffusion, runner.schedule, 2, 10)
    arrays = {n: v.numpy() for n, v in raw.items()}
    same = runner(arrays, noise=noise, step_noise=step_noise)
    again = runner(arrays, noise=noise, step_noise=step_noise)
    other = runner(arrays, noise=-noise, step_noise=step_noise)
    with torch.inference_mode():
        expected = diffusion(*raw.values()).numpy()
    assert same.shape == (2, diffusion.chunk_size, diffusion.action_dim)
    np.testing.assert_array_equal(same, again)
    np.testing.assert_allclose(same, expected, atol=1e-4)
    assert float(np.abs(other - same).max()) > 1e-3


def test_fp16_export_runs_without_dtype_errors_and_stays_close(
    diffusion: Any, diffusion_export: Any, tmp_path: Path
) -> None:
    from tools.lerobot.coverage import diffusion_fp16_variant
    from tools.lerobot.export import held_out_observations, observation_specs

    held_out = held_out_observations(observation_specs(diffusion), count=2)
    result = diffusion_fp16_variant(
        diffusion_export.directory, tmp_path, diffusion, held_out, steps=(4,), time_it=False
    )
    denoiser = onnx.load(str(tmp_path / "denoiser.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in denoiser.graph.initializer)
    fp32_bytes = diffusion_export.manifest["bytes"]
    assert result.bytes < 0.6 * fp32_bytes
    # measured: 6.6e-4 relative L2 over whole chunks (tiny policy, 10 and 4 DDPM steps; 4 here)
    assert result.parity.outputs[0].relative_l2 < 1e-2 and result.parity.min_cosine > 0.999


def test_a_ddim_policy_runs_under_the_same_networks(
    lerobot_diffusion_dir: Path, diffusion_export: Any, tmp_path: Path
) -> None:
    import shutil

    from diffusers import DDIMScheduler

    from tools.lerobot.diffusion_export import diffusion_parity, schedule_of
    from tools.lerobot.export import held_out_observations, load_policy_module, observation_specs

    module = load_policy_module(lerobot_diffusion_dir, seed=3)
    model = module.policy.diffusion
    # what LeRobot builds for noise_scheduler_type DDIM: the same settings, another scheduler class
    model.noise_scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
    model.config.noise_scheduler_type = "DDIM"
    for name in ("encoder.onnx", "denoiser.onnx"):
        shutil.copyfile(diffusion_export.directory / name, tmp_path / name)
    schedule_of(module).save(tmp_path)
    parity = diffusion_parity(
        module, tmp_path, held_out_observations(observation_specs(module), count=1), (5,)
    )
    assert parity.max_abs_error < 1e-4


def test_the_exported_runner_is_a_version_robopt_loads_and_converts_to_fp16(
    diffusion: Any, diffusion_export: Any, tmp_path: Path
) -> None:
    """The runner directory loads by content as a module with the policy's inputs and noise (seed 3 here), so it
    gives the torch policy's actions; lerobot_sampler_export turns it into an FP16 runner at fewer steps."""
    import shutil

    from tools.intake import ModelFormat, detect_format, load_model
    from tools.lerobot.diffusion_export import inference_steps
    from tools.lerobot.export import observation_specs
    from tools.lerobot.sampler_module import write_runner_facts
    from tools.lerobot.techniques import LeRobotSamplerExportConfig
    from tools.techniques.apply import apply
    from tools.versions import VersionStore

    runner_dir = tmp_path / "runner"
    shutil.copytree(diffusion_export.directory, runner_dir)
    specs = [spec.model_dump(mode="json") for spec in observation_specs(diffusion)]
    write_runner_facts(runner_dir, diffusion.policy_facts(), specs, diffusion.initial_noise.numpy())
    assert detect_format(runner_dir).format == ModelFormat.LEROBOT_SAMPLER
    loaded = load_model(runner_dir, data_dir=tmp_path / "data")
    assert [s.name for s in loaded.input_specs] == list(diffusion.input_names)
    assert loaded.metadata["policy"] == diffusion.policy_facts()
    generator = torch.Generator().manual_seed(5)
    feeds = {s.name: torch.rand((2, *s.shape[1:]), generator=generator) for s in loaded.input_specs}
    with torch.inference_mode():
        expected = diffusion(**feeds)
        np.testing.assert_allclose(loaded.module(**feeds).numpy(), expected.numpy(), atol=1e-4)

    store = VersionStore(tmp_path / "store")
    original = store.save("job", runner_dir, technique="original", format=ModelFormat.LEROBOT_SAMPLER.value)
    config = LeRobotSamplerExportConfig(fp16=True, num_inference_steps=4)
    applied = apply(store, "job", original.id, config, data_dir=tmp_path / "data")
    assert applied.version.format == "lerobot_sampler" and applied.facts["num_inference_steps"] == 4
    assert applied.facts["bytes"] < 0.6 * diffusion_export.manifest["bytes"]  # FP16 weights
    fp16 = load_model(store.artifact_path("job", applied.version.id), data_dir=tmp_path / "data")
    with torch.inference_mode(), inference_steps(diffusion, 4):
        expected = diffusion(**feeds).numpy()
    actions = fp16.module(**feeds).numpy()
    assert np.abs(actions - expected).max() <= 0.01 * max(np.abs(expected).max(), 1.0)


def test_a_policy_too_slow_for_its_parity_budget_is_checked_on_one_observation(
    diffusion: Any, diffusion_export: Any, tmp_path: Path
) -> None:
    """A zero budget stands for a policy of seconds a chunk: the check runs one batch-1 observation (not the
    3 + 2 rows given), still compares actions, and the report says it sampled."""
    import shutil

    from tools.lerobot.diffusion_export import diffusion_parity, schedule_of
    from tools.lerobot.export import held_out_observations, observation_specs

    for name in ("encoder.onnx", "denoiser.onnx"):
        shutil.copyfile(diffusion_export.directory / name, tmp_path / name)
    schedule_of(diffusion).save(tmp_path)
    batches = held_out_observations(observation_specs(diffusion), count=2, batch_sizes=(3, 2))
    sampled = diffusion_parity(diffusion, tmp_path, batches, budget_s=1e-9)
    assert sampled.rows == 1 and sampled.notes["observations"] == 1
    assert "one batch-1 observation" in str(sampled.notes["sampled"])
    assert sampled.max_abs_error < 1e-4
    full = diffusion_parity(diffusion, tmp_path, batches)
    assert full.rows == 5 and full.notes["observations"] == 5 and "sampled" not in full.notes
