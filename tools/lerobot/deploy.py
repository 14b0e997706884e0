"""One entry for a LeRobot policy's deployable ONNX form, chosen by its type.

ACT is one forward: `export_policy_onnx` (observation -> action chunk). Diffusion Policy is an iterative
sampler: `export_diffusion_onnx` (encoder + denoiser + numpy runner). VQ-BeT samples its codes inside the
forward (`torch.multinomial`), so its export is refused with the operator named until its sampling takes the
noise as an input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from tools.compression.onnx_export import DEFAULT_OPSET
from tools.errors import NotApplicableError
from tools.lerobot.diffusion_export import export_diffusion_onnx
from tools.lerobot.export import OnnxPolicyExport, export_policy_onnx, observation_specs


def export_deployable(
    module: Any,
    directory: Path,
    *,
    opset: int = DEFAULT_OPSET,
    held_out: Sequence[Mapping[str, torch.Tensor]] | None = None,
    parity_steps: Sequence[int | None] = (None,),
    max_abs_error: float = 1e-3,
    min_cosine: float = 0.999,
) -> OnnxPolicyExport:
    """Export a `LeRobotPolicyModule` in the form its policy type deploys in, with parity; see the module doc."""
    policy_type = getattr(module, "policy_type", "")
    if policy_type == "diffusion":
        return export_diffusion_onnx(
            module,
            directory,
            opset=opset,
            held_out=held_out,
            parity_steps=parity_steps,
            max_abs_error=max_abs_error,
            min_cosine=min_cosine,
        )
    if policy_type in ("act", "vqbet"):
        return export_policy_onnx(
            module,
            observation_specs(module),
            directory,
            opset=opset,
            held_out=held_out,
            max_abs_error=max_abs_error,
            min_cosine=min_cosine,
            metadata={"policy_type": policy_type},
        )
    raise NotApplicableError(
        f"no deployable ONNX form for LeRobot policy type {policy_type!r}",
        hint="robopt exports act (one forward) and diffusion (denoiser + runner)",
    )
