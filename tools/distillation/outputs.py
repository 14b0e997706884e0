"""Compare outputs and tap named modules' outputs: the pieces distillation and search share.

Running a module on named inputs and collecting its outputs lives in `tools.techniques.module_io`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from tools.errors import OptimizationError
from tools.techniques.module_io import named_outputs


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
