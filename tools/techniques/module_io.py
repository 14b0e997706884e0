"""Run an eager torch module on named inputs and collect the tensors it returns.

Models take their inputs by name (`forward(pixel_values, input_ids)`), by `**kwargs` (Hugging Face) or
positionally, and return a tensor, tuples, dicts or a Hugging Face `ModelOutput`; techniques that run a
model (pruning importance, distillation, search, fidelity checks) go through these two functions.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import numpy as np
import torch


def call_module(module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> Any:
    """Call `module` with the inputs by name when its forward takes those names, else positionally.

    Inputs its forward does not name are dropped when every required argument is present, so one set of
    calibration batches serves policies with fewer inputs (a conv policy fed VLA observations).
    """
    forward = getattr(module, "forward", module)
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = {p.name for p in params}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) or set(inputs) <= names:
        return module(**inputs)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = {p.name for p in params if p.default is inspect.Parameter.empty and p.kind in named}
    if names & set(inputs) and required <= set(inputs):
        return module(**{name: value for name, value in inputs.items() if name in names})
    return module(*inputs.values())


def named_outputs(value: Any, prefix: str = "", floating_only: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model output with its key path ('0', 'logits', '1.hidden'), in order.

    Tuples, lists, dicts and Hugging Face `ModelOutput`s are flattened; numpy arrays (ONNX Runtime outputs)
    become tensors. With `floating_only`, integer and boolean tensors are left out.
    """
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or not floating_only:
            found.append((prefix or "0", value))
        return found
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (tuple, list)):
        items = enumerate(value)
    elif hasattr(value, "to_tuple"):
        items = enumerate(value.to_tuple())
    else:
        return found
    for key, item in items:
        found += named_outputs(item, f"{prefix}.{key}" if prefix else str(key), floating_only)
    return found


def output_tensors(raw: Any, floating_only: bool = True) -> list[torch.Tensor]:
    """Every tensor in a model output, in order (see `named_outputs`); gradients and devices are kept."""
    return [tensor for _, tensor in named_outputs(raw, floating_only=floating_only)]
