"""Real LeRobot policies (small, random weights, built with LeRobot's own classes) in closed loop: ACT in
gym-aloha and Diffusion Policy in gym-pusht, through robopt's LeRobotPolicyModule (raw observations in,
unnormalized action chunk out). The same policy agrees with itself exactly and a copy with noisy weights
measurably does not (that the figures repeat with the same seeds is tested on toy policies, in
test_lerobot_sims.py). Small images (resized from the cameras) and 2 episodes x 20 steps keep it short."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from tools.evaluation.agreement import evaluate_closed_loop_agreement
from tools.evaluation.simulators import AlohaPlugin, PushTPlugin
from tools.inputs import InputSpec
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_thread")]
pytest.importorskip("gym_pusht", reason="the sim extra is not installed (pip install 'robopt[sim]')")
pytest.importorskip("lerobot", reason="the lerobot extra is not installed")


def _stats(image: str, image_channels: int, state_dim: int, action_center: float, action_std: float) -> dict:
    def vector(dim: int, center: float, std: float) -> dict[str, torch.Tensor]:
        mean, spread = torch.full((dim,), center), torch.full((dim,), std)
        return {"mean": mean, "std": spread, "min": mean - 2 * spread, "max": mean + 2 * spread}

    pixels = {
        "mean": torch.full((image_channels, 1, 1), 0.5),
        "std": torch.full((image_channels, 1, 1), 0.25),
        "min": torch.zeros(image_channels, 1, 1),
        "max": torch.ones(image_channels, 1, 1),
    }
    return {
        image: pixels,
        "observation.state": vector(state_dim, action_center, action_std),
        "action": vector(state_dim, action_center, action_std),
    }


def _policy(
    policy_type: str, image: str, image_shape: tuple[int, int, int], dim: int, stats: dict, **config: Any
) -> LoadedModel:
    """Build a LeRobot policy with random weights and its processors; wrap it as robopt loads it."""
    from tools.lerobot.imports import (
        import_config_class,
        import_lerobot_module,
        import_policy_class,
        import_processor_factory,
    )
    from tools.lerobot.policy_module import LeRobotPolicyModule

    types = import_lerobot_module("lerobot.configs.types")
    feature, kind = types.PolicyFeature, types.FeatureType
    inputs = {
        image: feature(type=kind.VISUAL, shape=image_shape),
        "observation.state": feature(kind.STATE, (dim,)),
    }
    outputs = {"action": feature(type=kind.ACTION, shape=(dim,))}
    settings = import_config_class(policy_type)(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        pretrained_backbone_weights=None,
        **config,
    )
    torch.manual_seed(0)
    policy = import_policy_class(policy_type)(settings).eval()
    pre, post = import_processor_factory(policy_type)(settings, dataset_stats=stats)
    module = LeRobotPolicyModule(policy, pre, post).eval()
    specs = [InputSpec(name=name, shape=shape) for name, shape in module.input_shapes(1).items()]
    path = Path("in-memory")
    return LoadedModel(
        path,
        path,
        ModelFormat.TORCH_PICKLED_MODULE,
        LoadOptions(),
        specs,
        module=module,
        metadata={"policy": module.policy_facts()},
    )


def _noisy(model: LoadedModel, fraction: float) -> LoadedModel:
    """A copy whose weights moved by `fraction` of each tensor's spread (a stand-in for a lossy optimization)."""
    module = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() > 1:
                parameter.add_(fraction * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return LoadedModel(
        model.source,
        model.path,
        model.format,
        model.options,
        model.input_specs,
        module=module,
        metadata=model.metadata,
    )


def test_act_in_aloha_agrees_with_itself_and_not_with_a_noisy_copy() -> None:
    pytest.importorskip("gym_aloha", reason="gym-aloha is not installed (pip install --no-deps gym-aloha)")
    stats = _stats("observation.images.top", 3, 14, 0.0, 0.3)
    act = dict(
        dim_model=64,
        n_heads=2,
        dim_feedforward=128,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_vae_encoder_layers=1,
        latent_dim=8,
        chunk_size=10,
        n_action_steps=10,
    )
    original = _policy("act", "observation.images.top", (3, 48, 64), 14, stats, **act)
    plugin = AlohaPlugin(fast_render=True, max_steps=20)
    same = evaluate_closed_loop_agreement(original, original, plugin, episodes=2, seed=0)
    assert plugin.actions_per_call == 10  # n_action_steps of the policy
    assert same.value == 1.0 and same.details["trajectory_divergence"]["max"] == 0.0
    noisy = _noisy(original, 0.1)
    worse = evaluate_closed_loop_agreement(original, noisy, plugin, episodes=2, seed=0)
    assert worse.value < 0.999 and worse.details["trajectory_divergence"]["max"] > 0.0


def test_diffusion_in_pusht_agrees_with_itself_and_not_with_a_noisy_copy() -> None:
    stats = _stats("observation.image", 3, 2, 256.0, 80.0)
    diffusion = dict(
        down_dims=(32, 64),
        kernel_size=3,
        n_groups=8,
        diffusion_step_embed_dim=32,
        spatial_softmax_num_keypoints=16,
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        drop_n_last_frames=3,
        num_inference_steps=4,
        crop_shape=None,
    )
    original = _policy("diffusion", "observation.image", (3, 64, 64), 2, stats, **diffusion)
    plugin = PushTPlugin(max_steps=20)
    same = evaluate_closed_loop_agreement(original, original, plugin, episodes=2, seed=0)
    assert plugin.history == 2 and plugin.actions_per_call == 4
    assert same.value == 1.0 and same.details["trajectory_divergence"]["max"] == 0.0
    noisy = _noisy(original, 0.1)
    worse = evaluate_closed_loop_agreement(original, noisy, plugin, episodes=2, seed=0)
    assert worse.details["action_relative_l2"] > 1e-3 and worse.details["trajectory_divergence"]["mean"] > 0.0
