"""Run models on named inputs and compare their outputs: the pieces distillation and search share."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from tools.errors import OptimizationError


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


def named_outputs(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a model output (tensor, tuple, dict, HF ModelOutput) with its key."""
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            found.append((prefix or "0", value))
    elif isinstance(value, Mapping) or hasattr(value, "to_tuple"):
        items = value.items() if isinstance(value, Mapping) else dict(value).items()
        for key, item in items:
            found += named_outputs(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            found += named_outputs(item, f"{prefix}.{index}" if prefix else str(index))
    return found


def output_tensors(module: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run `module` on `inputs` and return its floating outputs in order (gradients kept)."""
    return [tensor for _, tensor in named_outputs(call_module(module, inputs))]


def fidelity(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Return (cosine similarity, mean squared error) of all outputs flattened together."""
    a = torch.cat([t.detach().reshape(-1).double() for t in reference])
    b = torch.cat([t.detach().reshape(-1).double() for t in candidate])
    norms = float(a.norm() * b.norm())
    cosine = float(torch.dot(a, b) / norms) if norms > 0 else float(torch.equal(a, b))
    return cosine, float((a - b).pow(2).mean())


class FeatureTaps:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, module: nn.Module, names: Sequence[str], role: str) -> None:
        modules = dict(module.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            known = ", ".join(list(modules)[1:12])
            raise OptimizationError(
                f"the {role} has no module named {', '.join(missing)}",
                hint=f"name modules as model.named_modules() does, e.g. {known}",
            )
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._keeper(name)) for name in names]

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensors = named_outputs(output)
            if tensors:
                self.values[name] = tensors[0][1]

        return keep

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
