"""A LeRobot policy directory for torch outputs (pruned, distilled, cast), loadable by `from_pretrained`.

`save_lerobot_policy` writes what LeRobot writes (`config.json`, `model.safetensors`, via the policy's own
`save_pretrained`), copies the processor pipelines (`policy_preprocessor*.json|safetensors`, the normalization
statistics), then proves the round trip: `PolicyClass.from_pretrained(dir, strict=True)` must load every
tensor, and its actions must match the optimized policy's on held-out observations (`parity.json`).

What is supported (LeRobot builds a policy from config.json alone, so every tensor shape must follow from it):
- weights changed in place (unstructured pruning, distillation into the same architecture, fake-quantized or
  float16/bfloat16 weights: stored in their dtype, LeRobot loads them into its float32 parameters);
- ACT whose feed-forward layers were pruned to one common width: `dim_feedforward` is rewritten to it;
- anything else whose shapes the config cannot express (per-layer widths, pruned convolution channels) and
  weights held in tensor subclasses or packed quantized modules is refused with the tensors named: export
  such a version to ONNX instead (`tools.lerobot.export`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel
from torch import nn

from tools.errors import OptimizationError
from tools.lerobot.imports import load_policy
from tools.lerobot.parity import ParityReport, compare_chunks
from tools.lerobot.policy_module import LeRobotPolicyModule
from tools.log import get_logger

_log = get_logger("lerobot.save")
PROCESSOR_PREFIXES = ("policy_preprocessor", "policy_postprocessor")


class LeRobotDirExport(BaseModel):
    """A saved LeRobot policy directory and how faithfully the reloaded policy acts like the saved one."""

    directory: Path
    policy_type: str
    config_overrides: dict[str, Any]
    files: list[str]
    parity: ParityReport


def _plain_tensors(policy: nn.Module) -> None:
    """Refuse weights LeRobot's safetensors format cannot hold (tensor subclasses, packed quantized modules)."""
    odd = [name for name, value in policy.state_dict().items() if type(value) is not torch.Tensor]
    packed = [name for name, module in policy.named_modules() if "quantized" in type(module).__module__]
    if odd or packed:
        names = (packed or odd)[:5]
        raise OptimizationError(
            f"this policy holds quantized weights LeRobot cannot load from model.safetensors: {', '.join(names)}",
            hint="export the quantized version to ONNX (tools.lerobot.export) or save the float policy",
            detail={"tensors": odd[:20], "modules": packed[:20]},
        )


def _own_storage(policy: nn.Module) -> None:
    """Give every tensor that views part of a larger storage (slices left by pruning) its own copy.

    safetensors refuses to save a tensor that covers only part of its storage.
    """
    with torch.no_grad():
        for tensor in [*policy.parameters(), *policy.buffers()]:
            if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                tensor.data = tensor.data.clone()


def config_overrides(policy: nn.Module) -> dict[str, Any]:
    """Config fields to rewrite so that LeRobot builds the policy's (pruned) shapes; raise when none can.

    Builds a fresh policy from the config (on the meta device, no memory) and compares every tensor shape.
    """
    config = policy.config
    fresh = _build_meta(type(policy), config)
    mismatched = _shape_mismatches(fresh, policy)
    if not mismatched:
        return {}
    overrides: dict[str, Any] = {}
    if getattr(config, "type", "") == "act":
        widths = {
            tuple(value.shape)[0]
            for name, value in policy.state_dict().items()
            if name.endswith("linear1.weight") and ("encoder.layers" in name or "decoder.layers" in name)
        }
        if len(widths) == 1 and widths != {config.dim_feedforward}:
            overrides["dim_feedforward"] = widths.pop()
    if overrides:
        rebuilt = _build_meta(type(policy), _with(config, overrides))
        mismatched = _shape_mismatches(rebuilt, policy)
    if mismatched:
        raise OptimizationError(
            f"the policy's shapes cannot be built from a LeRobot {getattr(config, 'type', '')} config: "
            + ", ".join(f"{name} {got} (config builds {want})" for name, got, want in mismatched[:4]),
            hint="LeRobot's config expresses uniform widths only; export this version to ONNX instead",
            detail={"mismatched": [list(map(str, item)) for item in mismatched[:50]]},
        )
    return overrides


def _with(config: Any, overrides: Mapping[str, Any]) -> Any:
    changed = copy.deepcopy(config)
    for key, value in overrides.items():
        setattr(changed, key, value)
    return changed


def _build_meta(policy_class: type, config: Any) -> nn.Module:
    with torch.device("meta"):
        return policy_class(config)


def _shape_mismatches(fresh: nn.Module, policy: nn.Module) -> list[tuple[str, tuple, tuple]]:
    want = {name: tuple(value.shape) for name, value in fresh.state_dict().items()}
    got = {name: tuple(value.shape) for name, value in policy.state_dict().items()}
    return [
        (name, got.get(name, ()), want.get(name, ()))
        for name in sorted(set(want) | set(got))
        if want.get(name) != got.get(name)
    ]


def copy_processors(source_dir: Path, directory: Path) -> list[str]:
    """Copy the policy's pre/post-processor pipelines (JSON and statistics) from `source_dir`."""
    copied = []
    for path in sorted(Path(source_dir).iterdir()):
        if path.is_file() and path.name.startswith(PROCESSOR_PREFIXES):
            shutil.copyfile(path, Path(directory) / path.name)
            copied.append(path.name)
    return copied


def save_lerobot_policy(
    module: LeRobotPolicyModule,
    directory: Path,
    source_dir: Path,
    held_out: Sequence[Mapping[str, torch.Tensor]],
    max_abs_error: float = 1e-5,
) -> LeRobotDirExport:
    """Save the optimized policy inside `module` as a LeRobot directory, reload it with LeRobot, check parity.

    `source_dir` is the original LeRobot directory whose processors (normalization statistics) are copied.
    Raises OptimizationError when LeRobot cannot express or load the policy, or the reloaded one acts otherwise.
    """
    from tools.lerobot.policy_module import load_processors

    policy = module.policy
    _plain_tensors(policy)
    _own_storage(policy)
    overrides = config_overrides(policy)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kept = {key: getattr(policy.config, key) for key in overrides}
    for key, value in overrides.items():
        setattr(policy.config, key, value)
    try:
        policy.save_pretrained(directory)
    finally:
        for key, value in kept.items():
            setattr(policy.config, key, value)
    copy_processors(source_dir, directory)
    policy_type = str(policy.config.type)
    try:
        reloaded = load_policy(directory, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise OptimizationError(
            f"LeRobot cannot load the saved policy back: {str(exc).splitlines()[0]}",
            hint="export this version to ONNX instead",
        ) from None
    pre, post = load_processors(directory)
    loaded = LeRobotPolicyModule(reloaded.eval(), pre, post, seed=module.seed)
    names = list(module.input_names)
    reference, candidate = [], []
    # LeRobot loads float16/bfloat16 weights into float32 parameters: the saved values, float32 compute
    dtypes = {p.dtype for p in policy.parameters() if p.is_floating_point()}
    expected = module if dtypes <= {torch.float32} else copy.deepcopy(module).float()
    with torch.inference_mode():
        for batch in held_out:
            inputs = [batch[name] for name in names]
            reference.append({"action": expected(*inputs).float()})
            candidate.append({"action": loaded(*inputs).float()})
    parity = compare_chunks(
        reference,
        candidate,
        what="LeRobot from_pretrained vs saved torch policy",
        notes={"saved_dtypes": sorted(str(d) for d in dtypes), "loaded_as": "float32"},
    )
    parity.save(directory)
    parity.require(max_abs_error, 0.999)
    _log.info("saved a LeRobot policy directory", extra={"component": "lerobot.save", "path": str(directory)})
    return LeRobotDirExport(
        directory=directory,
        policy_type=policy_type,
        config_overrides=overrides,
        files=sorted(p.name for p in directory.iterdir()),
        parity=parity,
    )
