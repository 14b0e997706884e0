"""Which axes of an ONNX export are dynamic: the batch, and the sequence of a Hugging Face model's token
inputs up to its position limit, so that the graph takes every length a deployment feeds it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tools.inputs import InputSpec
from tools.intake.hf_inputs import TOKEN_INPUTS


def sequence_inputs(input_specs: list[InputSpec]) -> list[str]:
    """Token inputs laid out (batch, sequence) whose sequence length a deployment varies: every 2-D integer
    input named like a token input, unless image placeholder tokens fix the layout (multimodal prompts)."""
    if any(spec.prefix for spec in input_specs):
        return []
    return [
        spec.name
        for spec in input_specs
        if spec.name in TOKEN_INPUTS and spec.is_integer and len(spec.shape) == 2 and spec.shape[1] > 1
    ]


def sequence_limit(module: nn.Module) -> int | None:
    """The longest sequence a Hugging Face model takes (its position limit); None for other models, whose
    token layout robopt cannot know, so their sequence axis stays as measured."""
    limit = getattr(getattr(module, "config", None), "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 2 else None


def dynamic_axes(module: nn.Module, input_specs: list[InputSpec], dynamic_batch: bool) -> dict[str, Any]:
    """The exporter's dynamic axes per input: the batch (when asked) and the sequence of token inputs, up to
    the model's position limit."""
    axes: dict[str, dict[int, Any]] = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        axes = {spec.name: {0: batch} for spec in input_specs}
    tokens = sequence_inputs(input_specs)
    limit = sequence_limit(module)
    if tokens and limit is not None:
        sequence = torch.export.Dim("sequence", min=2, max=limit)
        for name in tokens:
            axes.setdefault(name, {})[1] = sequence
    return axes
