"""TinyVLA: a small vision-language-action policy with the component layout of real VLAs.

Image patches go through `vision_tower`, instruction tokens through `language_backbone`, proprioception
through `proprio_encoder`; a transformer trunk (`blocks`, explicit q/k/v/o and MLP Linear layers so that
pruning can remove heads and neurons) mixes them, and `action_head` maps all trunk tokens to an action chunk.
The vision stem is FiLM-conditioned on the instruction, as in RT-1, which makes the policy learn in seconds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from tools.inputs import InputSpec
from tools.reference.reaching import VOCABULARY, ReachingConfig

_TASK = ReachingConfig()


class TinyVLAConfig(BaseModel):
    """Shape of a TinyVLA; the defaults build the reference model (about 6M parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(default=_TASK.image_size, ge=8, description="Square input image side in pixels.")
    stem_channels: tuple[int, ...] = Field(
        default=(16, 32, 64, 128),
        min_length=1,
        description="Channels of the stride-2 conv stages of the stem.",
    )
    vocab_size: int = Field(default=len(VOCABULARY), ge=2, description="Instruction vocabulary size.")
    max_instruction_tokens: int = Field(
        default=_TASK.max_instruction_tokens, ge=1, description="Token count L."
    )
    proprio_dim: int = Field(default=_TASK.proprio_dim, ge=1, description="Proprioception features P.")
    chunk_size: int = Field(default=_TASK.chunk_size, ge=1, description="Actions predicted per call K.")
    action_dim: int = Field(default=2, ge=1, description="Dimensions of one action.")
    action_scale: float = Field(
        default=_TASK.max_step, gt=0, description="Output scale (the task's step cap)."
    )
    hidden_size: int = Field(default=128, ge=8, description="Token width of every transformer block.")
    num_heads: int = Field(default=4, ge=1, description="Attention heads per block.")
    mlp_ratio: int = Field(default=4, ge=1, description="MLP width as a multiple of hidden_size.")
    vision_layers: int = Field(default=0, ge=0, description="Transformer blocks in the vision tower.")
    language_layers: int = Field(default=1, ge=0, description="Blocks in the language backbone.")
    trunk_layers: int = Field(default=2, ge=1, description="Blocks over all tokens together.")
    head_hidden_size: int = Field(default=1024, ge=8, description="Width of the action head MLP.")
    head_layers: int = Field(default=3, ge=1, description="Hidden layers of the action head MLP.")

    @model_validator(mode="after")
    def _consistent(self) -> "TinyVLAConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.stem_channels)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self

    @property
    def patch_size(self) -> int:
        """Side in pixels of the image cell that becomes one token."""
        return 2 ** len(self.stem_channels)

    @property
    def num_patches(self) -> int:
        """Image tokens per sample."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens in the trunk: one proprioception token, the instruction, the image."""
        return 1 + self.max_instruction_tokens + self.num_patches


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections; head count follows q_proj's width."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length = hidden.shape[0], hidden.shape[1]
        heads = self.q_proj.out_features // self.head_dim
        q = self.q_proj(hidden).view(batch, length, heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, length, heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, length, heads, self.head_dim).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim)), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, heads * self.head_dim)
        return self.o_proj(mixed)


class MLP(nn.Module):
    """Two-layer GELU feed-forward network."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden)))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each with a residual connection."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, hidden_size * mlp_ratio)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(self.norm1(hidden))
        return hidden + self.mlp(self.norm2(hidden))


class FiLMConvStage(nn.Module):
    """Stride-2 conv, batch norm, FiLM modulation by the instruction, ReLU (as in RT-1's image tokenizer)."""

    def __init__(self, in_channels: int, out_channels: int, condition_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.film = nn.Linear(condition_size, 2 * out_channels)
        self.act = nn.ReLU()

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(condition).chunk(2, dim=-1)
        modulated = self.norm(self.conv(features)) * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.act(modulated)


class VisionTower(nn.Module):
    """Instruction-conditioned image tokenizer: a FiLM conv stem with coordinate channels, one token per cell."""

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__()
        channels = (5,) + tuple(config.stem_channels)
        self.stem = nn.ModuleList(
            FiLMConvStage(channels[i], channels[i + 1], config.hidden_size) for i in range(len(channels) - 1)
        )
        self.patch_proj = nn.Linear(channels[-1], config.hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))
        blocks = [
            Block(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.vision_layers)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.hidden_size)
        axis = (torch.arange(config.image_size, dtype=torch.float32) + 0.5) / config.image_size
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("coordinates", torch.stack([cols, rows])[None], persistent=False)

    def forward(self, pixel_values: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """Turn images (B, 3, H, W) into tokens (B, N, D), modulated by the pooled instruction (B, D)."""
        coordinates = self.coordinates.expand(pixel_values.shape[0], -1, -1, -1)
        features = torch.cat([pixel_values - 0.5, coordinates], dim=1)
        for stage in self.stem:
            features = stage(features, instruction)
        hidden = self.patch_proj(features.flatten(2).transpose(1, 2)) + self.position_embedding
        for block in self.blocks:
            hidden = block(hidden)
        return self.norm(hidden)


class LanguageBackbone(nn.Module):
    """Instruction encoder: token and position embeddings and a few blocks."""

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(
            torch.zeros(1, config.max_instruction_tokens, config.hidden_size)
        )
        blocks = [
            Block(config.hidden_size, config.num_heads, config.mlp_ratio)
            for _ in range(config.language_layers)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) + self.position_embedding[:, : input_ids.shape[1]]
        for block in self.blocks:
            hidden = block(hidden)
        return self.norm(hidden)


class ActionHead(nn.Module):
    """MLP over every trunk token (flattened) to a chunk of K actions, scaled to the task's step size."""

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.num_tokens * config.hidden_size
        for _ in range(config.head_layers):
            layers += [nn.Linear(width, config.head_hidden_size), nn.GELU()]
            width = config.head_hidden_size
        layers.append(nn.Linear(width, config.chunk_size * config.action_dim))
        self.mlp = nn.Sequential(*layers)
        self.chunk_size = config.chunk_size
        self.action_dim = config.action_dim
        self.register_buffer("action_scale", torch.tensor(config.action_scale), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        actions = self.mlp(tokens.flatten(1)).view(tokens.shape[0], self.chunk_size, self.action_dim)
        return actions * self.action_scale


class TinyVLA(nn.Module):
    """Vision-language-action policy: (pixel_values, input_ids, proprio) -> action chunk (B, K, action_dim).

    Build it with `TinyVLA()` (the reference shape), `TinyVLA(config)` or `TinyVLA(**config_json)`.
    """

    def __init__(self, config: TinyVLAConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = TinyVLAConfig.model_validate({**(config.model_dump() if config else {}), **overrides})
        self.config = cfg
        self.language_backbone = LanguageBackbone(cfg)
        self.vision_tower = VisionTower(cfg)
        self.proprio_encoder = nn.Sequential(
            nn.Linear(cfg.proprio_dim, cfg.hidden_size),
            nn.GELU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
        self.modality_embedding = nn.Parameter(torch.zeros(1, 3, cfg.hidden_size))
        self.blocks = nn.ModuleList(
            [Block(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.trunk_layers)]
        )
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.action_head = ActionHead(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for parameter in (
            self.modality_embedding,
            self.vision_tower.position_embedding,
            self.language_backbone.position_embedding,
        ):
            nn.init.normal_(parameter, std=0.02)
        for stage in self.vision_tower.stem:
            nn.init.zeros_(stage.film.weight)  # start as an unconditioned stem; FiLM learns the instruction

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor
    ) -> torch.Tensor:
        """Predict an action chunk (B, K, action_dim) from images, instruction token ids and proprioception."""
        text = self.language_backbone(input_ids)
        vision = self.vision_tower(pixel_values, text.mean(dim=1)) + self.modality_embedding[:, 0:1]
        state = self.proprio_encoder(proprio).unsqueeze(1) + self.modality_embedding[:, 1:2]
        hidden = torch.cat([state, text + self.modality_embedding[:, 2:3], vision], dim=1)
        for block in self.blocks:
            hidden = block(hidden)
        return self.action_head(self.norm(hidden))

    @staticmethod
    def input_specs(config: TinyVLAConfig | dict[str, Any] | None = None) -> list[InputSpec]:
        """Return the batch-1 input specification: image, instruction token ids in the vocabulary, state."""
        cfg = (
            TinyVLAConfig.model_validate(config) if isinstance(config, dict) else (config or TinyVLAConfig())
        )
        return [
            InputSpec(name="pixel_values", shape=(1, 3, cfg.image_size, cfg.image_size), dtype="float32"),
            InputSpec(
                name="input_ids",
                shape=(1, cfg.max_instruction_tokens),
                dtype="int64",
                low=0,
                high=cfg.vocab_size,
            ),
            InputSpec(name="proprio", shape=(1, cfg.proprio_dim), dtype="float32"),
        ]

    @staticmethod
    def output_names() -> list[str]:
        """Name of the single output: the action chunk."""
        return ["actions"]
