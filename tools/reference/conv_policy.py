"""ConvPolicy: a small convolutional visuomotor policy (image and proprioception in, action chunk out).

The shape robotics users bring from behaviour cloning and diffusion-policy pipelines: a `backbone` of
Conv2d/BatchNorm2d/ReLU stages and an MLP `action_head`. It has no instruction input, so its task is the
single-target variant of the reaching task (`SINGLE_TARGET_TASK`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from tools.inputs import InputSpec
from tools.reference.reaching import ReachingConfig

SINGLE_TARGET_TASK = ReachingConfig(min_targets=1, max_targets=1)
POLICY_INPUTS = ("pixel_values", "proprio")


class ConvPolicyConfig(BaseModel):
    """Shape of a ConvPolicy; the defaults build the reference model (about 1M parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(default=SINGLE_TARGET_TASK.image_size, ge=8, description="Square image side.")
    channels: tuple[int, ...] = Field(
        default=(32, 64, 64, 64), min_length=1, description="Channels of the stride-2 conv stages."
    )
    proprio_dim: int = Field(default=SINGLE_TARGET_TASK.proprio_dim, ge=1, description="Proprioception P.")
    chunk_size: int = Field(default=SINGLE_TARGET_TASK.chunk_size, ge=1, description="Actions per call K.")
    action_dim: int = Field(default=2, ge=1, description="Dimensions of one action.")
    action_scale: float = Field(default=SINGLE_TARGET_TASK.max_step, gt=0, description="Output scale.")
    head_hidden_size: int = Field(default=512, ge=8, description="Width of the action head MLP.")

    @model_validator(mode="after")
    def _consistent(self) -> "ConvPolicyConfig":
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.channels)}")
        return self

    @property
    def feature_size(self) -> int:
        """Side of the backbone's output feature map."""
        return self.image_size // 2 ** len(self.channels)


class ConvPolicy(nn.Module):
    """Visuomotor policy: (pixel_values, proprio) -> action chunk (B, K, action_dim)."""

    def __init__(self, config: ConvPolicyConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = ConvPolicyConfig.model_validate({**(config.model_dump() if config else {}), **overrides})
        self.config = cfg
        stages: list[nn.Module] = []
        width = 5  # RGB plus two coordinate channels, so that the features can say where things are
        for channels in cfg.channels:
            stages += [
                nn.Conv2d(width, channels, 3, stride=2, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
            width = channels
        self.backbone = nn.Sequential(*stages)
        features = width * cfg.feature_size**2 + cfg.proprio_dim
        self.action_head = nn.Sequential(
            nn.Linear(features, cfg.head_hidden_size),
            nn.ReLU(),
            nn.Linear(cfg.head_hidden_size, cfg.head_hidden_size),
            nn.ReLU(),
            nn.Linear(cfg.head_hidden_size, cfg.chunk_size * cfg.action_dim),
        )
        axis = (torch.arange(cfg.image_size, dtype=torch.float32) + 0.5) / cfg.image_size
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("coordinates", torch.stack([cols, rows])[None], persistent=False)
        self.register_buffer("action_scale", torch.tensor(cfg.action_scale), persistent=False)
        self.chunk_size = cfg.chunk_size
        self.action_dim = cfg.action_dim

    def forward(self, pixel_values: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Predict an action chunk (B, K, action_dim) from images (B, 3, H, W) and proprioception (B, P)."""
        batch = pixel_values.shape[0]
        image = torch.cat([pixel_values - 0.5, self.coordinates.expand(batch, -1, -1, -1)], dim=1)
        features = torch.cat([self.backbone(image).flatten(1), proprio], dim=1)
        actions = self.action_head(features).view(batch, self.chunk_size, self.action_dim)
        return actions * self.action_scale

    @staticmethod
    def input_specs(config: ConvPolicyConfig | dict[str, Any] | None = None) -> list[InputSpec]:
        """Return the batch-1 input specification: image and proprioception."""
        cfg = (
            ConvPolicyConfig.model_validate(config)
            if isinstance(config, dict)
            else (config or ConvPolicyConfig())
        )
        return [
            InputSpec(name="pixel_values", shape=(1, 3, cfg.image_size, cfg.image_size), dtype="float32"),
            InputSpec(name="proprio", shape=(1, cfg.proprio_dim), dtype="float32"),
        ]

    @staticmethod
    def output_names() -> list[str]:
        """Name of the single output: the action chunk."""
        return ["actions"]
