"""Depth pruning: drop the transformer blocks that change their input the least.

Block lists are found generically: an `nn.ModuleList` of same-class modules that hold attention (TinyVLA's
`blocks`, a Hugging Face `LlamaModel.layers`, a vision encoder's layers). Importance is measured on
calibration inputs (synthetic when none are given), either as ShortGPT's Block Influence (Men et al. 2024:
1 - cosine similarity of a block's input and output hidden states, averaged over tokens) or as the output
error of the whole model when that block alone is skipped. The lowest-scored blocks are removed from their
list; Hugging Face configs (`num_hidden_layers`, `layer_types`) and `layer_idx` attributes follow.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tools.errors import NotApplicableError, OptimizationError
from tools.intake.types import ModelFormat
from tools.log import get_logger
from tools.pruning.common import (
    calibration_inputs,
    count_parameters,
    fidelity,
    is_attention,
    model_outputs,
    output_shapes,
)
from tools.techniques.artifacts import TORCH_INPUTS, save_module_product
from tools.techniques.base import (
    Family,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.module_io import call_module
from tools.techniques.registry import register
from tools.techniques.selection import PROTECTED_DESCRIPTION, ProtectedModulesConfig, is_protected

_log = get_logger("pruning.depth")
_DEFAULT_FRACTION = 0.25


class DepthPruneConfig(ProtectedModulesConfig):
    """Drop the least important transformer blocks, measured on calibration inputs."""

    type: Literal["depth_prune"] = "depth_prune"
    num_blocks_to_drop: int | None = Field(
        default=None, ge=1, description="Blocks to drop; give this or `fraction`."
    )
    fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description=f"Fraction of all blocks to drop (at least one); {_DEFAULT_FRACTION} when neither is given.",
        json_schema_extra={"search": [0.1, 0.25, 0.5]},
    )
    importance: Literal["cosine", "drop_error"] = Field(
        default="cosine",
        description="'cosine': ShortGPT block influence, 1 - cos(block input, block output); 'drop_error': "
        "1 - cosine of the model's output to the original's with the block skipped (one run per block).",
        json_schema_extra={"search": ["cosine", "drop_error"]},
    )
    block_list: str | None = Field(
        default=None,
        description="Qualified name of the ModuleList to prune (e.g. 'model.layers'); None ranks the blocks "
        "of every block list found together.",
    )
    protected_indices: tuple[int, ...] = Field(
        default=(0,),
        description="Block positions never dropped in each list (negative counts from the end): the first "
        "block usually matters most.",
        json_schema_extra={"search": [[], [0], [0, -1]]},
    )
    protected: tuple[str, ...] = Field(
        default=(), description=PROTECTED_DESCRIPTION + " A block matching it is never dropped."
    )
    calibration_batches: int = Field(
        default=4, ge=1, le=64, description="Calibration batches the importance is measured on."
    )

    @model_validator(mode="after")
    def _one_amount(self) -> "DepthPruneConfig":
        if self.num_blocks_to_drop is not None and self.fraction is not None:
            raise ValueError("give num_blocks_to_drop or fraction, not both")
        return self

    def drop_count(self, total: int) -> int:
        """Blocks to drop out of `total`."""
        if self.num_blocks_to_drop is not None:
            return self.num_blocks_to_drop
        return max(1, round(total * (self.fraction if self.fraction is not None else _DEFAULT_FRACTION)))


def find_block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList of same-class modules that hold attention (transformer block stacks), by name."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) == 1 and all(is_attention(child) for child in module):
            found.append((name, module))
    return found


def _hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    return value if isinstance(value, torch.Tensor) else None


def _hidden_output(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@torch.inference_mode()
def block_influence(
    model: nn.Module, blocks: list[tuple[str, nn.Module]], batches: list[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """ShortGPT block influence of each block: 1 - mean cosine of its input and output hidden states."""
    sums = {name: 0.0 for name, _ in blocks}
    counts = {name: 0 for name, _ in blocks}

    def hook_for(name: str) -> Any:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            before, after = _hidden_input(args, kwargs), _hidden_output(output)
            if before is None or after is None or before.shape != after.shape:
                raise OptimizationError(
                    f"block {name} does not map a hidden-state tensor to one of the same shape",
                    hint="use importance='drop_error', or name another block list",
                )
            cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1, eps=1e-8)
            sums[name] += float(cos.sum())
            counts[name] += cos.numel()

        return hook

    handles = [block.register_forward_hook(hook_for(name), with_kwargs=True) for name, block in blocks]
    try:
        for batch in batches:
            call_module(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1.0 - sums[name] / max(counts[name], 1) for name, _ in blocks}


@torch.inference_mode()
def drop_error(
    model: nn.Module, blocks: list[tuple[str, nn.Module]], batches: list[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """1 - mean cosine of the model's first output to the original's when each block alone is skipped."""
    reference = model_outputs(model, batches)

    def skip(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = _hidden_input(args, kwargs)
        if isinstance(output, torch.Tensor):
            return hidden
        return (hidden, *output[1:]) if isinstance(output, tuple) else output

    scores = {}
    for name, block in blocks:
        handle = block.register_forward_hook(skip, with_kwargs=True)
        try:
            skipped = model_outputs(model, batches)
        finally:
            handle.remove()
        scores[name] = 1.0 - fidelity(reference, skipped)["output_cosine"]
    return scores


def _select(
    lists: list[tuple[str, nn.ModuleList]], scores: dict[str, float], config: DepthPruneConfig
) -> list[str]:
    """Lowest-scored droppable blocks, never a protected one nor the last block of a list."""
    droppable, remaining = [], {name: len(blocks) for name, blocks in lists}
    for list_name, blocks in lists:
        positions = {p % len(blocks) for p in config.protected_indices if -len(blocks) <= p < len(blocks)}
        for index in range(len(blocks)):
            name = f"{list_name}.{index}" if list_name else str(index)
            if index not in positions and not is_protected(name, config.protected):
                droppable.append((scores[name], name, list_name))
    total = sum(remaining.values())
    wanted = config.drop_count(total)
    chosen = []
    for _, name, list_name in sorted(droppable):
        if len(chosen) == wanted:
            break
        if remaining[list_name] > 1:
            chosen.append(name)
            remaining[list_name] -= 1
    if len(chosen) < wanted:
        raise OptimizationError(
            f"depth_prune can drop only {len(chosen)} of the {wanted} blocks asked "
            f"({total} blocks; protected ones and the last block of each list stay)",
            hint="ask for fewer blocks or protect fewer",
        )
    return chosen


def drop_blocks(model: nn.Module, lists: list[tuple[str, nn.ModuleList]], dropped: set[str]) -> list[str]:
    """Rebuild each block list without the dropped blocks; fix HF configs and `layer_idx`; return the updates."""
    modules = dict(model.named_modules())
    updates = []
    for list_name, blocks in lists:
        keep = [i for i in range(len(blocks)) if f"{list_name}.{i}" not in dropped]
        if len(keep) == len(blocks):
            continue
        parent_name, _, attribute = list_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attribute, nn.ModuleList([blocks[i] for i in keep]))
        for new_index, old_index in enumerate(keep):
            for sub in blocks[old_index].modules():
                if isinstance(getattr(sub, "layer_idx", None), int):
                    sub.layer_idx = new_index
        updates += _update_config(model, list_name, len(blocks), keep)
    return updates


def _update_config(model: nn.Module, list_name: str, before: int, keep: list[int]) -> list[str]:
    """Set num_hidden_layers (and layer_types) of the configs of the modules holding the list."""
    updates, seen = [], set()
    for name, module in model.named_modules():
        cfg = getattr(module, "config", None)
        inside = not name or list_name.startswith(name + ".")
        if not inside or id(cfg) in seen or getattr(cfg, "num_hidden_layers", None) != before:
            continue
        seen.add(id(cfg))
        cfg.num_hidden_layers = len(keep)
        updates.append(f"{name or 'model'}.config.num_hidden_layers={len(keep)}")
        layer_types = getattr(cfg, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == before:
            cfg.layer_types = [layer_types[i] for i in keep]
            updates.append(f"{name or 'model'}.config.layer_types")
    return updates


@register(
    DepthPruneConfig,
    TechniqueSpec(
        name="depth_prune",
        family=Family.PRUNING,
        summary="Drop whole transformer blocks with the lowest measured importance (ShortGPT block influence "
        "or output error when skipped).",
        input_formats=TORCH_INPUTS,
        output_format=ModelFormat.TORCH_PICKLED_MODULE.value,
        runtimes=("torch-cpu", "torch-cuda"),
        precision="fp32",
        expected_effect="Each dropped block removes its parameters and its share of latency. Reference VLA, "
        "one of two trunk blocks: 3% fewer parameters (the action head holds most), batch-1 CPU p50 10-20% "
        "lower (1 thread, in process), held-out action cosine to the original 0.93. Blocks that barely "
        "change their input cost least fidelity. Uses calibration inputs (synthetic when none are given).",
    ),
)
def _apply_depth_prune(ctx: TechniqueContext, config: DepthPruneConfig) -> TechniqueProduct:
    model = ctx.require_module(config.type)
    model.eval()
    lists = find_block_lists(model)
    if config.block_list is not None:
        lists = [(name, blocks) for name, blocks in lists if name == config.block_list]
        if not lists:
            known = ", ".join(name for name, _ in find_block_lists(model)) or "none"
            raise OptimizationError(
                f"depth_prune: {config.block_list!r} is not a transformer block list of this model",
                hint=f"block lists found: {known}",
            )
    if not lists:
        raise NotApplicableError(
            "depth_prune found no transformer block list (an nn.ModuleList of same-class attention blocks)",
            hint="depth pruning needs a transformer; use structured_prune for other architectures",
        )
    batches = calibration_inputs(ctx, config.calibration_batches)
    ctx.progress(25, f"depth_prune: measuring block importance ({config.importance})")
    blocks = [(f"{list_name}.{i}", block) for list_name, blocks_ in lists for i, block in enumerate(blocks_)]
    reference = model_outputs(model, batches)
    measure = block_influence if config.importance == "cosine" else drop_error
    scores = measure(model, blocks, batches)
    ctx.progress(50, "depth_prune: choosing the blocks to drop")
    dropped = _select(lists, scores, config)
    params_before = count_parameters(model)
    counts_before = {name: len(blocks_) for name, blocks_ in lists}
    ctx.progress(75, f"depth_prune: dropping {', '.join(dropped)}")
    updates = drop_blocks(model, lists, set(dropped))
    try:
        after = model_outputs(model, batches)
    except Exception as exc:  # noqa: BLE001 - report any failure of the shortened model as one error
        raise OptimizationError(f"the model no longer runs without {', '.join(dropped)}: {exc}") from exc
    if output_shapes(after) != output_shapes(reference):
        raise OptimizationError("dropping blocks changed the output shapes")
    modules = dict(model.named_modules())
    facts: dict[str, Any] = {
        "importance": config.importance,
        "blocks_before": counts_before,
        "blocks_after": {name: len(modules[name]) for name in counts_before},
        "dropped": [{"block": name, "score": round(scores[name], 6)} for name in dropped],
        "scores": {name: round(score, 6) for name, score in scores.items()},
        "parameters_before": params_before,
        "parameters_after": count_parameters(model),
        "config_updates": updates,
    }
    facts["removed_fraction"] = round(1 - facts["parameters_after"] / params_before, 6)
    facts.update(fidelity(reference, after))
    product = save_module_product(ctx, model, facts)
    _log.info("depth pruned", extra={"job_id": ctx.job_id, "technique": config.type, "dropped": len(dropped)})
    return product
