"""LeRobot policy directories are recognized by content, loaded with LeRobot's classes and profiled by part."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tools.errors import UnsupportedFormatError
from tools.intake import ModelFormat, detect_format, load_model
from tools.profiling import profile_model

pytestmark = pytest.mark.integration


def test_loading_a_policy_leaves_nothing_in_the_temp_folder(
    lerobot_act_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: LeRobot's `PreTrainedConfig.from_pretrained` left a `tmp*.json` in the temp folder per load."""
    import tempfile

    from tools.lerobot.imports import load_policy, load_policy_config

    private = tmp_path / "temp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    assert load_policy_config(lerobot_act_dir).type == "act"
    assert load_policy(lerobot_act_dir, strict=True).config.chunk_size > 0
    load_model(lerobot_act_dir, data_dir=data_dir)
    assert list(private.iterdir()) == []


@pytest.mark.parametrize("policy_type", ["act", "diffusion", "vqbet"])
def test_policy_directory_loads_with_specs_from_features(
    lerobot_zoo: dict[str, Path], policy_type: str, data_dir: Path
) -> None:
    directory = lerobot_zoo[policy_type]
    assert detect_format(directory).format == ModelFormat.LEROBOT_POLICY
    loaded = load_model(directory, data_dir=data_dir)
    facts = loaded.metadata["policy"]
    assert facts["type"] == policy_type and facts["action_dim"] == 6
    lead = (1,) if policy_type == "act" else (1, facts["n_obs_steps"])
    assert {spec.name: spec.shape for spec in loaded.input_specs} == {
        "observation_images_top": (*lead, 3, 64, 64),
        "observation_state": (*lead, 6),
    }
    assert facts["input_names"]["observation_images_top"] == "observation.images.top"
    inputs = loaded.example_inputs()
    with torch.no_grad():
        first = loaded.module(*inputs.values())
        again = load_model(directory, data_dir=data_dir).module(*inputs.values())  # what a child reloads
    assert first.shape == (1, facts["chunk_size"], 6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_unsupported_policy_type_is_refused_with_the_reason(lerobot_act_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "pi0"
    shutil.copytree(lerobot_act_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "type": "pi0"}))
    assert detect_format(directory).format == ModelFormat.LEROBOT_POLICY  # not "no model_type"
    with pytest.raises(UnsupportedFormatError, match="pi0.*transformers") as info:
        load_model(directory, data_dir=tmp_path / "data")
    assert "act, diffusion, vqbet" in (info.value.hint or "")


def test_policy_directory_without_weights_is_named(lerobot_act_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "act"
    directory.mkdir()
    shutil.copy(lerobot_act_dir / "config.json", directory / "config.json")
    (directory / "weights.safetensors").write_bytes(b"")
    with pytest.raises(
        UnsupportedFormatError, match="LeRobot act policy directory without model.safetensors"
    ):
        detect_format(directory)


def test_act_profiles_as_visual_policy_not_vla(lerobot_act_dir: Path, data_dir: Path) -> None:
    profile = profile_model(load_model(lerobot_act_dir, data_dir=data_dir))
    roles = {c.name: c.role for c in profile.components}
    assert profile.architecture.kind == "visual_policy" and not profile.architecture.is_vla
    assert "language_backbone" not in roles.values()
    assert roles["policy.model.backbone"] == "vision_tower"
    assert (
        roles["policy.model.action_head"] == "action_head" and roles["policy.model.decoder"] == "action_head"
    )
    backbone = next(c for c in profile.components if c.name == "policy.model.backbone")
    assert backbone.flops > 0.9 * profile.flops  # the ResNet is where the compute is


def test_diffusion_profiles_encoder_and_unet(lerobot_diffusion_dir: Path, data_dir: Path) -> None:
    profile = profile_model(load_model(lerobot_diffusion_dir, data_dir=data_dir))
    roles = {c.name: c.role for c in profile.components}
    assert roles == {"policy.diffusion.rgb_encoder": "vision_tower", "policy.diffusion.unet": "action_head"}
    assert profile.architecture.kind == "visual_policy"
    assert "action head (UNet" in profile.architecture.summary


def test_robopt_torch_version_of_a_policy_reloads_as_a_policy(
    lerobot_diffusion_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    from tools.intake import LoadOptions
    from tools.techniques.artifacts import save_torch_module

    original = load_model(lerobot_diffusion_dir, data_dir=data_dir)
    path, _, options = save_torch_module(original.module, tmp_path, original.input_specs)
    reloaded = load_model(path, options, data_dir=data_dir)
    assert isinstance(options, LoadOptions) and reloaded.format == ModelFormat.TORCH_PICKLED_MODULE
    assert reloaded.metadata["policy"] == original.metadata["policy"]
    inputs = original.example_inputs(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module(**inputs), original.module(**inputs), rtol=0, atol=0)


def test_a_diffusion_policys_scheduler_and_steps_are_read_from_its_config(
    lerobot_diffusion_dir: Path, lerobot_diffusion_ddim_dir: Path, lerobot_act_dir: Path, tmp_path: Path
) -> None:
    """What the planner needs to offer fewer denoising steps: the scheduler, and the steps it samples with now
    (LeRobot's `num_inference_steps`, else its training timesteps)."""
    from tools.intake.detect import diffusion_inference_steps, diffusion_scheduler

    assert (diffusion_scheduler(lerobot_diffusion_dir), diffusion_inference_steps(lerobot_diffusion_dir)) == (
        "DDPM",
        10,
    )
    assert diffusion_scheduler(lerobot_diffusion_ddim_dir) == "DDIM"
    assert diffusion_inference_steps(lerobot_diffusion_ddim_dir) == 3
    assert diffusion_inference_steps(lerobot_act_dir) is None
    unset = tmp_path / "unset"
    shutil.copytree(lerobot_diffusion_dir, unset)
    config = json.loads((unset / "config.json").read_text())
    config.update(num_inference_steps=None, num_train_timesteps=100)
    (unset / "config.json").write_text(json.dumps(config))
    assert diffusion_inference_steps(unset) == 100
    runner = tmp_path / "runner"  # an exported sampler: the steps it runs now, from its sampler.json
    runner.mkdir()
    (runner / "sampler.json").write_text(json.dumps({"kind": "DDIM", "num_inference_steps": 20}))
    assert diffusion_inference_steps(runner) == 20
    (runner / "sampler.json").write_text("{torn")
    assert diffusion_inference_steps(runner) is None
