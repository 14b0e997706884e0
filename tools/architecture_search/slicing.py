"""Build a smaller candidate from trained weights: keep the most important heads, neurons and channels (by
L1 norm of the weights that produce and read them) and the most important or evenly spaced blocks.

Slicing replaces parameters in place on a deep copy, so every module keeps its class and forward; the output
shape is unchanged because only internal widths and the number of residual blocks change.
`verify_space` proves each dimension exact: the sliced model must equal the original with the removed units
zeroed (or the removed blocks skipped).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
from torch import nn

from tools.architecture_search.space import Dimension, SearchSpace, WidthGroup
from tools.errors import OptimizationError
from tools.log import get_logger
from tools.techniques.module_io import call_module, output_tensors

_log = get_logger("architecture_search")
BlockScores = dict[str, list[float]]
"""Importance of each block of a stack by the stack's module path (higher is more important)."""


def unit_importance(model: nn.Module, group: WidthGroup) -> torch.Tensor:
    """Score each unit of `group`: L1 norm of the weights that produce it plus of those that read it.

    Each layer's share is divided by its mean, so that layers of different scales count alike.
    """
    score = torch.zeros(group.units, dtype=torch.float64)
    width = group.units * group.unit_size
    for path, chunks in zip(group.producers, group.chunks):
        weight = model.get_submodule(path).weight.detach().double().abs()
        rows = weight.reshape(weight.shape[0], -1).sum(dim=1).reshape(chunks, width).sum(dim=0)
        score += _normalized(rows.reshape(group.units, group.unit_size).sum(dim=1))
    for path in group.consumers:
        weight = model.get_submodule(path).weight.detach().double().abs()
        columns = weight.transpose(0, 1).reshape(weight.shape[1], -1).sum(dim=1)
        score += _normalized(columns.reshape(group.units, group.unit_size).sum(dim=1))
    return score


def _normalized(values: torch.Tensor) -> torch.Tensor:
    mean = float(values.mean())
    return values / mean if mean > 0 else values


def kept_indices(model: nn.Module, group: WidthGroup, keep: int) -> torch.Tensor:
    """The `keep` most important units of `group`, in their original order."""
    if keep >= group.units:
        return torch.arange(group.units)
    order = torch.argsort(unit_importance(model, group), descending=True, stable=True)
    return torch.sort(order[:keep]).values


def kept_blocks(count: int, keep: int, scores: list[float] | None = None) -> list[int]:
    """Indices of the blocks kept: the highest-scoring ones, or evenly spaced keeping the first and last."""
    if keep >= count:
        return list(range(count))
    if scores is not None and len(scores) == count:
        order = sorted(range(count), key=lambda i: (-scores[i], i))
        return sorted(order[:keep])
    if keep == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (keep - 1)) for i in range(keep)})


def _features(group: WidthGroup, units: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(group.unit_size)
    return (units[:, None] * group.unit_size + offsets[None, :]).reshape(-1)


def _take(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> nn.Parameter | torch.Tensor:
    taken = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    return (
        nn.Parameter(taken, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else taken
    )


def _slice_outputs(layer: nn.Module, rows: torch.Tensor) -> None:
    layer.weight = _take(layer.weight, 0, rows)
    if getattr(layer, "bias", None) is not None:
        layer.bias = _take(layer.bias, 0, rows)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(rows)
    elif isinstance(layer, nn.Conv2d):
        layer.out_channels = len(rows)
    else:
        raise OptimizationError(f"cannot slice the outputs of a {type(layer).__name__}")


def _slice_inputs(layer: nn.Module, columns: torch.Tensor) -> None:
    layer.weight = _take(layer.weight, 1, columns)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(columns)
    elif isinstance(layer, nn.Conv2d):
        layer.in_channels = len(columns)
    else:
        raise OptimizationError(f"cannot slice the inputs of a {type(layer).__name__}")


def _slice_norm(layer: nn.Module, features: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(layer, name, None)
        if value is None:
            continue
        taken = _take(value, 0, features)
        if isinstance(value, nn.Parameter):
            setattr(layer, name, taken)
        else:
            layer.register_buffer(name, taken)
    if isinstance(layer, nn.modules.batchnorm._NormBase):
        layer.num_features = len(features)
    elif isinstance(layer, nn.LayerNorm):
        layer.normalized_shape = (len(features),)


def slice_group(model: nn.Module, group: WidthGroup, units: torch.Tensor) -> None:
    """Keep only `units` of `group` in `model` (in place)."""
    features = _features(group, units)
    width = group.units * group.unit_size
    for path, chunks in zip(group.producers, group.chunks):
        rows = torch.cat([features + chunk * width for chunk in range(chunks)])
        _slice_outputs(model.get_submodule(path), rows)
    for path in group.norms:
        _slice_norm(model.get_submodule(path), features)
    for path in group.consumers:
        _slice_inputs(model.get_submodule(path), features)


def _replace_blocks(model: nn.Module, path: str, keep: list[int]) -> None:
    stack = model.get_submodule(path)
    kept = [stack[i] for i in keep]
    new = type(stack)(kept) if isinstance(stack, (nn.ModuleList, nn.Sequential)) else nn.ModuleList(kept)
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)


def slice_architecture(
    module: nn.Module,
    space: SearchSpace,
    architecture: dict[str, int],
    block_scores: BlockScores | None = None,
) -> nn.Module:
    """Return a sliced deep copy of `module` with `architecture`'s depths and widths (others unchanged)."""
    chosen = space.complete(architecture)
    model = copy.deepcopy(module)
    for dim in space.dimensions:
        if dim.kind == "depth" or chosen[dim.name] == dim.original:
            continue
        for group in dim.groups:
            slice_group(model, group, kept_indices(module, group, dim.kept_units(group, chosen[dim.name])))
    for dim in space.dimensions:
        if dim.kind == "depth" and chosen[dim.name] != dim.original:
            scores = (block_scores or {}).get(dim.path)
            _replace_blocks(model, dim.path, kept_blocks(dim.original, chosen[dim.name], scores))
    return model.eval()


@torch.no_grad()
def block_importance(
    module: nn.Module, space: SearchSpace, inputs: Mapping[str, torch.Tensor]
) -> BlockScores:
    """Score the blocks of every searched stack by how much they change their input: ||out - in|| / ||in||."""
    scores: BlockScores = {}
    handles = []
    for dim in space.dimensions:
        if dim.kind != "depth":
            continue
        stack = module.get_submodule(dim.path)
        scores[dim.path] = [0.0] * len(stack)
        for index, block in enumerate(stack):
            handles.append(block.register_forward_hook(_update_recorder(scores[dim.path], index)))
    try:
        call_module(module.eval(), inputs)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def _update_recorder(target: list[float], index: int) -> Callable[..., None]:
    def record(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        outputs = output_tensors(output)
        if args and isinstance(args[0], torch.Tensor) and outputs and outputs[0].shape == args[0].shape:
            change = (outputs[0] - args[0]).norm() / args[0].norm().clamp_min(1e-12)
            target[index] = float(change)

    return record


def _masking_hooks(model: nn.Module, dim: Dimension, choice: int, scores: BlockScores | None) -> list[Any]:
    """Hooks that make the original behave as the sliced model: zero removed units, skip removed blocks."""
    handles = []
    if dim.kind == "depth":
        stack = model.get_submodule(dim.path)
        keep = set(kept_blocks(dim.original, choice, (scores or {}).get(dim.path)))
        for index, block in enumerate(stack):
            if index not in keep:
                handles.append(block.register_forward_hook(lambda _m, args, _out: args[0]))
        return handles
    for group in dim.groups:
        keep = _features(group, kept_indices(model, group, dim.kept_units(group, choice)))
        for path in group.consumers:
            layer = model.get_submodule(path)
            handles.append(layer.register_forward_pre_hook(_zero_except(keep, isinstance(layer, nn.Conv2d))))
    return handles


def _zero_except(keep: torch.Tensor, channels_first: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        features = args[0]
        dim = 1 if channels_first else features.ndim - 1
        mask = torch.zeros(features.shape[dim], dtype=features.dtype, device=features.device)
        mask[keep] = 1
        shape = [1] * features.ndim
        shape[dim] = -1
        return (features * mask.view(shape),) + tuple(args[1:])

    return hook


@torch.no_grad()
def verify_space(
    module: nn.Module,
    space: SearchSpace,
    inputs: Mapping[str, torch.Tensor],
    block_scores: BlockScores | None = None,
    tolerance: float = 1e-4,
) -> tuple[SearchSpace, dict[str, str]]:
    """Keep the dimensions whose smallest slice equals the masked original on `inputs`; say why others went."""
    module.eval()
    kept: list[Dimension] = []
    dropped: dict[str, str] = {}
    for dim in space.dimensions:
        choice = dim.choices[0]
        handles = _masking_hooks(module, dim, choice, block_scores)
        try:
            expected = output_tensors(call_module(module, inputs))
        except Exception as exc:  # noqa: BLE001 - a hook the model cannot take rules the dimension out
            dropped[dim.name] = f"masking failed: {exc}"
            continue
        finally:
            for handle in handles:
                handle.remove()
        try:
            sliced = slice_architecture(module, space, {dim.name: choice}, block_scores)
            actual = output_tensors(call_module(sliced, inputs))
        except Exception as exc:  # noqa: BLE001 - a layer the slicer misreads rules the dimension out
            dropped[dim.name] = f"slicing failed: {exc}"
            continue
        error = _max_relative_error(expected, actual)
        if error <= tolerance:
            kept.append(dim)
        else:
            dropped[dim.name] = f"sliced model differs from the masked original (relative error {error:.2e})"
    for name, reason in dropped.items():
        _log.info("search dimension left out", extra={"dimension": name, "reason": reason})
    return SearchSpace(dimensions=tuple(kept)), dropped


def _max_relative_error(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
    if len(expected) != len(actual) or any(a.shape != b.shape for a, b in zip(expected, actual)):
        return float("inf")
    errors = [float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(expected, actual)]
    return max(errors, default=0.0)
