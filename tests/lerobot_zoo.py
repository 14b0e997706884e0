"""Small random-weight LeRobot policy directories, saved the way LeRobot saves them, for fast tests.

Each builder makes the policy with LeRobot's own config and policy classes, saves it with
`policy.save_pretrained(dir)` (config.json + model.safetensors) and saves LeRobot's pre/post-processor
pipelines with dataset statistics (`policy_preprocessor.json`, `policy_postprocessor.json` and their
safetensors state). Sizes are cut (fewer layers, narrow widths, 64x64 images) so that each builds in about a
second on two cores; the vision backbones keep LeRobot's ResNet18.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tools.lerobot.imports import (
    import_config_class,
    import_lerobot_module,
    import_policy_class,
    import_processor_factory,
)

STATE_DIM = 6
ACTION_DIM = 6
IMAGE_SHAPE = (3, 64, 64)
IMAGE_KEY = "observation.images.top"
STATE_KEY = "observation.state"


def _features(
    image_shape: tuple[int, ...] = IMAGE_SHAPE, state_dim: int = STATE_DIM, action_dim: int = ACTION_DIM
) -> tuple[dict[str, Any], dict[str, Any]]:
    types = import_lerobot_module("lerobot.configs.types")
    feature, kind = types.PolicyFeature, types.FeatureType
    inputs = {
        IMAGE_KEY: feature(type=kind.VISUAL, shape=tuple(image_shape)),
        STATE_KEY: feature(type=kind.STATE, shape=(state_dim,)),
    }
    outputs = {"action": feature(type=kind.ACTION, shape=(action_dim,))}
    return inputs, outputs


def dataset_stats(
    image_shape: tuple[int, ...] = IMAGE_SHAPE,
    seed: int = 0,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
) -> dict[str, dict[str, torch.Tensor]]:
    """Plausible dataset statistics (mean/std/min/max and quantiles) for the zoo's features."""
    generator = torch.Generator().manual_seed(seed)

    def vector(dim: int, scale: float) -> dict[str, torch.Tensor]:
        mean = torch.randn(dim, generator=generator) * scale
        std = torch.rand(dim, generator=generator) * scale + 0.1 * scale
        low, high = mean - 2 * std, mean + 2 * std
        return {
            "mean": mean,
            "std": std,
            "min": low,
            "max": high,
            "q01": low,
            "q99": high,
            "q10": mean - std,
            "q90": mean + std,
        }

    channels = image_shape[0]
    image = {
        "mean": torch.tensor([0.485, 0.456, 0.406][:channels]).view(channels, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225][:channels]).view(channels, 1, 1),
        "min": torch.zeros(channels, 1, 1),
        "max": torch.ones(channels, 1, 1),
    }
    return {IMAGE_KEY: image, STATE_KEY: vector(state_dim, 0.5), "action": vector(action_dim, 0.8)}


def write_policy(
    policy_type: str,
    directory: Path,
    *,
    image_shape: tuple[int, ...] = IMAGE_SHAPE,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
    seed: int = 0,
    **config_kwargs: Any,
) -> Path:
    """Build a policy of `policy_type` with random weights; save it and its processors with statistics."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs, outputs = _features(tuple(image_shape), state_dim, action_dim)
    config = import_config_class(policy_type)(
        input_features=inputs, output_features=outputs, device="cpu", **config_kwargs
    )
    torch.manual_seed(seed)
    policy = import_policy_class(policy_type)(config)
    policy.eval()
    policy.save_pretrained(directory)
    stats = dataset_stats(tuple(image_shape), seed, state_dim, action_dim)
    pre, post = import_processor_factory(policy_type)(config, dataset_stats=stats)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def write_tiny_act(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """A small ACT (ResNet18 on 3x64x64, one encoder and decoder layer, width 64, chunk of 10)."""
    kwargs: dict[str, Any] = dict(
        pretrained_backbone_weights=None,
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
    return write_policy("act", directory, seed=seed, **{**kwargs, **overrides})


def write_tiny_diffusion(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """A small Diffusion Policy (ResNet18 encoder, UNet widths 32/64, horizon 8, 10 DDPM inference steps)."""
    kwargs: dict[str, Any] = dict(
        pretrained_backbone_weights=None,
        down_dims=(32, 64),
        kernel_size=3,
        n_groups=8,
        diffusion_step_embed_dim=32,
        spatial_softmax_num_keypoints=16,
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        drop_n_last_frames=3,
        num_inference_steps=10,
        crop_shape=None,
    )
    return write_policy("diffusion", directory, seed=seed, **{**kwargs, **overrides})


def write_tiny_vqbet(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """A small VQ-BeT (ResNet18 encoder, one GPT layer of width 64, codebooks of 8)."""
    kwargs: dict[str, Any] = dict(
        pretrained_backbone_weights=None,
        n_obs_steps=2,
        n_action_pred_token=2,
        action_chunk_size=3,
        crop_shape=None,
        spatial_softmax_num_keypoints=16,
        vqvae_n_embed=8,
        vqvae_embedding_dim=32,
        vqvae_enc_hidden_dim=32,
        gpt_block_size=50,
        gpt_input_dim=64,
        gpt_output_dim=64,
        gpt_n_layer=1,
        gpt_n_head=2,
        gpt_hidden_dim=64,
    )
    return write_policy("vqbet", directory, seed=seed, **{**kwargs, **overrides})


BUILDERS: dict[str, Callable[..., Path]] = {
    "act": write_tiny_act,
    "diffusion": write_tiny_diffusion,
    "vqbet": write_tiny_vqbet,
}


def write_lerobot_dataset(
    directory: Path, episodes: int = 4, frames: int = 20, seed: int = 0, fps: int = 10
) -> Path:
    """A small LeRobotDataset (images stored in parquet, no videos) with the zoo's features, made with
    `LeRobotDataset.create`, `add_frame` and `save_episode`.

    The recorded action of frame `i` of episode `e` starts with `(e, i)`, so a test can tell which frame an
    action label came from; the other dimensions, the state and the image are seeded noise.
    """
    import numpy as np

    dataset_class = import_lerobot_module("lerobot.datasets.lerobot_dataset").LeRobotDataset
    height, width = IMAGE_SHAPE[1:]
    features = {
        IMAGE_KEY: {
            "dtype": "image",
            "shape": (height, width, IMAGE_SHAPE[0]),
            "names": ["height", "width", "channels"],
        },
        STATE_KEY: {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    dataset = dataset_class.create(
        repo_id=f"local/{Path(directory).name}", root=directory, fps=fps, features=features, use_videos=False
    )
    rng = np.random.default_rng(seed)
    for episode in range(episodes):
        for frame in range(frames):
            action = rng.standard_normal(ACTION_DIM).astype(np.float32)
            action[:2] = (episode, frame)
            dataset.add_frame(
                {
                    IMAGE_KEY: rng.integers(0, 256, (height, width, IMAGE_SHAPE[0]), dtype=np.uint8),
                    STATE_KEY: rng.standard_normal(STATE_DIM).astype(np.float32),
                    "action": action,
                    "task": "pick the cube",
                }
            )
        dataset.save_episode()
    if hasattr(dataset, "finalize"):
        dataset.finalize()
    return Path(directory)
