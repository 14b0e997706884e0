"""Structured pruning: physically remove conv channels, MLP neurons and whole attention heads.

Channels and neurons are removed with torch-pruning's `DependencyGraph`, which finds every layer coupled to a
channel (batch norm, the next layer's inputs, a flatten into a Linear, elementwise products) so that they
are cut together; torch-pruning's group importance scores the channels. Two things are ours. Attention heads
are removed for q/k/v/o layouts (whole heads: head_dim rows of q/k/v and the matching o columns; with
grouped-query attention a key/value head together with the query heads it serves), because torch-pruning
1.6.1 never returns when it traces the rotary position embedding of transformers 5 Llama attention. And a
Linear whose output is `chunk`ed (TinyVLA's FiLM scale and shift) has its rows cut here, because
torch-pruning maps a channel only to the first chunk. Never pruned: the model's outputs, the residual
(hidden) width shared through LayerNorm, embeddings and free parameters, and head dimensions.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch import nn

from tools.errors import OptimizationError
from tools.intake.types import ModelFormat
from tools.log import get_logger
from tools.pruning.common import (
    AttentionLayout,
    calibration_inputs,
    calibration_labels,
    count_parameters,
    fidelity,
    find_attention,
    model_outputs,
    output_shapes,
)
from tools.techniques.artifacts import TORCH_INPUTS, save_module_product
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.module_io import call_module, output_tensors
from tools.techniques.registry import register
from tools.techniques.selection import (
    PROTECTED_DESCRIPTION,
    ProtectedModulesConfig,
    protected_module_names,
    unmatched_patterns,
)

_log = get_logger("pruning.structured")
_CALIBRATION_BATCHES = 4
_FIDELITY_BATCHES = 2


class StructuredPruneConfig(ProtectedModulesConfig):
    """Remove the least important conv channels, MLP neurons and attention heads (the model gets smaller)."""

    type: Literal["structured_prune"] = "structured_prune"
    ratio: float = Field(
        default=0.3,
        gt=0.0,
        le=0.9,
        description="Fraction of the channels/neurons of every prunable group (and of the heads) removed.",
        json_schema_extra={"search": [0.2, 0.3, 0.5, 0.7]},
    )
    importance: Literal["l1", "l2", "taylor"] = Field(
        default="l2",
        description="Channel score: weight L1 or L2 norm of the whole coupled group, or first-order Taylor "
        "|w * dL/dw| on calibration inputs, which it needs (MSE to the labels when given, else the output "
        "energy).",
        json_schema_extra={"search": ["l1", "l2", "taylor"]},
    )
    prune_heads: bool = Field(
        default=True,
        description="Also remove whole attention heads (the same ratio); False keeps every head.",
    )
    round_to: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Keep channel counts a multiple of this (8 or 16 suits vectorized kernels).",
        json_schema_extra={"search": [1, 8, 16]},
    )
    iterative_steps: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Reach the ratio in this many steps, re-scoring the channels after each one.",
    )
    protected: tuple[str, ...] = Field(
        default=(),
        description=PROTECTED_DESCRIPTION
        + " The output layer always keeps its width; a protected module keeps its input width too.",
        json_schema_extra={"search": [[], ["action_head"]]},
    )


def _layer_widths(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """(out width, in width, parameter count) of every Linear and Conv layer, by name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            widths[name] = (module.out_features, module.in_features, _own_params(module))
        elif isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = (module.out_channels, module.in_channels, _own_params(module))
    return widths


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def accumulate_gradients(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], labels: list[torch.Tensor] | None
) -> str:
    """Fill `.grad` for Taylor scores; return the loss used ("mse_to_labels" or "output_energy")."""
    model.zero_grad(set_to_none=True)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    used = "output_energy"
    with torch.enable_grad():
        for index, batch in enumerate(batches):
            output = output_tensors(call_module(model, batch))[0]
            label = labels[index] if labels is not None else None
            if label is not None and label.shape == output.shape:
                loss = torch.nn.functional.mse_loss(output, label.to(output.dtype))
                used = "mse_to_labels"
            else:
                loss = output.float().pow(2).mean()
            loss.backward()
    return used


def _head_scores(layout: AttentionLayout, importance: str) -> torch.Tensor:
    """Score of each key/value head group (its key/value head plus the query heads it serves)."""
    d, groups = layout.head_dim, layout.kv_heads
    per_q = layout.q_heads // groups

    def measure(weight: torch.Tensor) -> torch.Tensor:
        if importance == "taylor":
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            return (weight.detach() * grad).abs()
        return weight.detach().abs() if importance == "l1" else weight.detach().pow(2)

    q = measure(layout.q.weight).reshape(groups, per_q * d, -1).sum(dim=(1, 2))
    k = measure(layout.k.weight).reshape(groups, d, -1).sum(dim=(1, 2))
    v = measure(layout.v.weight).reshape(groups, d, -1).sum(dim=(1, 2))
    o = measure(layout.o.weight).reshape(layout.o.out_features, groups, per_q * d).sum(dim=(0, 2))
    total = q + k + v + o
    return total.sqrt() if importance == "l2" else total


def prune_heads(layouts: list[AttentionLayout], ratio: float, importance: str) -> dict[str, list[int]]:
    """Remove the lowest-scored `ratio` of head groups of every layout; return {name: [before, after]} heads."""
    import torch_pruning as tp

    heads = {}
    for layout in layouts:
        before, groups = layout.q_heads, layout.kv_heads
        drop = min(int(groups * ratio + 1e-9), groups - 1)
        if drop > 0:
            order = torch.argsort(_head_scores(layout, importance), stable=True)
            removed = sorted(int(g) for g in order[:drop])
            d, per_q = layout.head_dim, layout.q_heads // groups
            kv_rows = [g * d + i for g in removed for i in range(d)]
            q_rows = [(g * per_q + h) * d + i for g in removed for h in range(per_q) for i in range(d)]
            tp.prune_linear_out_channels(layout.q, q_rows)
            tp.prune_linear_out_channels(layout.k, kv_rows)
            tp.prune_linear_out_channels(layout.v, kv_rows)
            tp.prune_linear_in_channels(layout.o, q_rows)
            for attribute, value in (
                ("num_heads", layout.q_heads),
                ("num_attention_heads", layout.q_heads),
                ("num_key_value_heads", layout.kv_heads),
            ):
                if isinstance(getattr(layout.module, attribute, None), int):
                    setattr(layout.module, attribute, value)
        heads[layout.name] = [before, layout.q_heads]
    return heads


def _split_feeders(graph: Any) -> dict[nn.Module, list[int]]:
    """Layers whose output is `chunk`ed/`split` (FiLM scale and shift): their split sizes.

    torch-pruning 1.6.1 maps a channel of the chunked tensor only to the first chunk's row of such a layer
    (a FiLM Linear would lose channel i's scale row but keep its shift row), so these layers never root a
    group and their rows are cut here: channel i of every equal chunk.
    """
    from torch_pruning import ops

    feeders = {}
    for module, node in graph.module2node.items():
        if not isinstance(module, nn.Linear):
            continue
        for out in node.outputs:
            if out.type == ops.OPTYPE.SPLIT and getattr(out.module, "split_sizes", None):
                feeders[module] = [int(size) for size in out.module.split_sizes]
    return feeders


def _skip_group(
    graph: Any,
    group: Any,
    kept: set[nn.Module],
    feeders: dict[nn.Module, list[int]],
    width: int,
    width_kept: frozenset[nn.Module] = frozenset(),
) -> bool:
    """Whether a group must stay whole: it reaches an output, the hidden width, a kept layer or an odd split."""
    from torch_pruning import ops

    kept_types = {ops.OPTYPE.OUTPUT, ops.OPTYPE.LN, ops.OPTYPE.EMBED, ops.OPTYPE.PARAMETER, ops.OPTYPE.MHA}
    for dep, _ in group:
        module = dep.target.module
        if dep.target.type in kept_types or module in kept:
            return True
        if module in width_kept and graph.is_out_channel_pruning_fn(dep.handler):
            return True
        if not dep.target.outputs and graph.is_out_channel_pruning_fn(dep.handler):
            return True  # what nothing consumes is a model output (HF logits get no output node)
        if module in feeders and set(feeders[module]) != {width}:
            return True
    return False


def _without(group: Any, modules: dict[nn.Module, list[int]]) -> Any:
    """A copy of `group` without the items of `modules` (for scoring)."""
    from torch_pruning.dependency.group import Group

    copy = Group()
    copy._DG = group._DG
    copy._group = [item for item in group.items if item.dep.target.module not in modules]
    return copy


def _prune_group(graph: Any, group: Any, feeders: dict[nn.Module, list[int]]) -> None:
    """Prune every layer of `group`; a chunk-feeding layer loses channel i of each of its chunks."""
    import torch_pruning as tp
    from torch_pruning import _helpers

    for dep, idxs in group.items:
        module = dep.target.module
        if module in feeders and graph.is_out_channel_pruning_fn(dep.handler):
            plain = _helpers.to_plain_idxs(idxs)
            offsets = [sum(feeders[module][:j]) for j in range(len(feeders[module]))]
            tp.prune_linear_out_channels(module, [offset + i for offset in offsets for i in plain])
        else:
            dep(idxs)


def _keep_count(initial: int, current: int, fraction: float, round_to: int) -> int:
    """Channels to keep of a group that started with `initial`: (1 - fraction) of it, a multiple of round_to."""
    keep = int(initial * (1.0 - fraction) + 1e-9)
    if round_to > 1:
        keep = max(keep - keep % round_to, min(round_to, initial))
    return max(1, min(keep, current))


def prune_channels(
    model: nn.Module,
    config: StructuredPruneConfig,
    example: dict[str, torch.Tensor],
    kept: set[nn.Module],
    gradients: Callable[[], None],
    width_kept: frozenset[nn.Module] = frozenset(),
) -> int:
    """Remove channels/neurons of every prunable dependency group, in `iterative_steps` steps.

    `kept` layers stay whole; `width_kept` layers keep their output width but may lose input channels.

    Each group (a root Conv/Linear with everything coupled to its output channels) is scored with the
    chosen importance and loses its lowest-scored channels; the graph is traced again before each step.
    """
    import torch_pruning as tp

    if config.importance == "taylor":
        importance = tp.importance.GroupTaylorImportance(normalizer=None)
    else:
        importance = tp.importance.GroupMagnitudeImportance(
            p=1 if config.importance == "l1" else 2, normalizer=None
        )
    initial: dict[nn.Module, int] = {}
    pruned = 0
    for step in range(1, config.iterative_steps + 1):
        fraction = config.ratio * step / config.iterative_steps
        gradients()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unwrapped parameters": their groups are never pruned
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                forward_fn=call_module,
                output_transform=output_tensors,
                customized_pruners=_buffer_norm_pruners(model),
            )
        feeders = _split_feeders(graph)
        visited: set[nn.Module] = set()
        roots = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        for root in roots:
            if root in visited or root in kept or root in width_kept or root in feeders:
                continue
            if root not in graph.module2node:
                continue
            prune_fn = graph.get_pruner_of_module(root).prune_out_channels
            width = graph.get_out_channels(root)
            group = graph.get_pruning_group(root, prune_fn, list(range(width)))
            visited.update(
                dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
            )
            if _skip_group(graph, group, kept, feeders, width, width_kept):
                continue
            keep = _keep_count(initial.setdefault(root, width), width, fraction, config.round_to)
            if keep >= width:
                continue
            scores = importance(_without(group, feeders))
            if scores is None or len(scores) != width:
                continue
            order = torch.argsort(scores.cpu(), stable=True)
            drop = sorted(int(i) for i in order[: width - keep])
            _prune_group(graph, graph.get_pruning_group(root, prune_fn, drop), feeders)
            pruned += 1
    return pruned


def _update_hf_configs(model: nn.Module, layouts: list[AttentionLayout], widths: dict[str, Any]) -> list[str]:
    """Make Hugging Face configs tell the new head count and MLP width where every layer agrees."""
    updates = []
    by_config: dict[int, tuple[Any, list[AttentionLayout]]] = {}
    for layout in layouts:
        cfg = getattr(layout.module, "config", None)
        if cfg is not None and hasattr(cfg, "num_attention_heads"):
            by_config.setdefault(id(cfg), (cfg, []))[1].append(layout)
    for cfg, members in by_config.values():
        q_heads = {layout.q_heads for layout in members}
        kv_heads = {layout.kv_heads for layout in members}
        if len(q_heads) == 1 and len(kv_heads) == 1 and q_heads != {cfg.num_attention_heads}:
            cfg.head_dim = members[0].head_dim
            cfg.num_attention_heads = q_heads.pop()
            updates.append(f"{_kind(cfg)}.num_attention_heads={cfg.num_attention_heads}")
            if hasattr(cfg, "num_key_value_heads"):
                cfg.num_key_value_heads = kv_heads.pop()
                updates.append(f"{_kind(cfg)}.num_key_value_heads={cfg.num_key_value_heads}")
    for name, module in model.named_modules():
        cfg = getattr(module, "config", None)
        size = getattr(cfg, "intermediate_size", None)
        if not isinstance(size, int) or isinstance(module, nn.Linear):
            continue
        new = {
            child.out_features
            for child_name, child in module.named_children()
            if isinstance(child, nn.Linear) and widths.get(f"{name}.{child_name}", (None,))[0] == size
        }
        if len(new) == 1 and new != {size}:
            cfg.intermediate_size = new.pop()
            updates.append(f"{_kind(cfg)}.intermediate_size={cfg.intermediate_size}")
    return sorted(set(updates))


def _kind(cfg: Any) -> str:
    return str(getattr(cfg, "model_type", "") or "config")


@register(
    StructuredPruneConfig,
    TechniqueSpec(
        name="structured_prune",
        family=Family.PRUNING,
        summary="Physically remove conv channels, MLP neurons and attention heads (torch-pruning dependency "
        "graph + whole-head removal); the model gets fewer parameters and FLOPs.",
        needs=Needs(
            calibration_data=False,
            packages=("torch_pruning",),
            install_hint="pip install torch-pruning",
        ),
        input_formats=TORCH_INPUTS,
        output_format=ModelFormat.TORCH_PICKLED_MODULE.value,
        runtimes=("torch-cpu", "torch-cuda"),
        precision="fp32",
        expected_effect="Reference VLA at ratio 0.5 (action head hidden layers, MLPs, half the heads, FiLM "
        "conv stem; output layer and residual width kept): 59% fewer parameters and a file as much smaller, "
        "batch-1 CPU p50 20-35% lower (1 thread, in process), but held-out action cosine to the original "
        "only about 0.6: recover with distillation or fine-tuning. Taylor importance needs calibration inputs; "
        "l1/l2 need none.",
    ),
)
def _apply_structured_prune(ctx: TechniqueContext, config: StructuredPruneConfig) -> TechniqueProduct:
    model = ctx.require_module(config.type)
    model.eval()
    if config.importance == "taylor":
        ctx.require_calibration(f"{config.type} with importance='taylor'")
    batches = calibration_inputs(ctx, _CALIBRATION_BATCHES)
    labels = calibration_labels(ctx, _CALIBRATION_BATCHES)
    example = ctx.source.example_inputs(seed=config.seed)
    reference = model_outputs(model, batches[:_FIDELITY_BATCHES])
    example_shapes = output_shapes(model_outputs(model, [example]))
    params_before, widths_before = count_parameters(model), _layer_widths(model)
    modules = dict(model.named_modules())
    protected_names = protected_module_names(model, config.protected)
    layouts, unsupported = _attention_to_prune(model, config, protected_names)
    loss_used: list[str] = []

    def gradients() -> None:
        if config.importance == "taylor":
            loss_used.append(accumulate_gradients(model, batches, labels))

    ctx.progress(25, f"structured_prune: removing {config.ratio:.0%} of the attention heads")
    heads: dict[str, list[int]] = {}
    if config.prune_heads and layouts:
        gradients()
        heads = prune_heads(layouts, config.ratio, config.importance)
    ctx.progress(50, f"structured_prune: removing {config.ratio:.0%} of the channels and neurons")
    kept = {modules[name] for name in protected_names}
    for layout in layouts:
        kept.update((layout.q, layout.k, layout.v, layout.o))
    for name in unsupported:
        kept.update(m for m in modules[name].modules() if isinstance(m, (nn.Linear, nn.MultiheadAttention)))
    residual = frozenset(_residual_writers(model, [modules[name] for name in unsupported]))
    groups = prune_channels(model, config, example, kept, gradients, residual)
    for parameter in model.parameters():
        parameter.grad = None

    ctx.progress(75, "structured_prune: checking the pruned module and writing it")
    try:
        shapes = output_shapes(model_outputs(model, [example]))
    except Exception as exc:  # noqa: BLE001 - report any failure of the pruned graph as one error
        raise OptimizationError(f"the pruned model no longer runs: {exc}") from exc
    if shapes != example_shapes:
        raise OptimizationError(f"pruning changed the output shapes from {example_shapes} to {shapes}")
    params_after = count_parameters(model)
    facts: dict[str, Any] = {
        "ratio": config.ratio,
        "importance": config.importance,
        "parameters_before": params_before,
        "parameters_after": params_after,
        "removed_fraction": round(1 - params_after / params_before, 6),
        **_width_facts(widths_before, _layer_widths(model)),
        "heads": heads,
        "channel_groups_pruned": groups,
        "protected_layers": sorted(n for n in protected_names if _own_params(modules[n])),
        "unsupported_attention_kept": unsupported,
        "heads_kept_reason": (
            f"{len(unsupported)} attention layers have fused or packed q/k/v projections "
            f"({type(modules[unsupported[0]]).__name__}); their heads are kept, channels and neurons pruned"
            if config.prune_heads and unsupported and not layouts
            else None
        ),
        "unmatched_protected_patterns": unmatched_patterns(model, config.protected),
        "config_updates": _update_hf_configs(model, layouts, widths_before),
    }
    if loss_used:
        facts["taylor_loss"] = loss_used[-1]
    facts.update(fidelity(reference, model_outputs(model, batches[:_FIDELITY_BATCHES])))
    product = save_module_product(ctx, model, facts)
    _log.info(
        "structured pruned",
        extra={"job_id": ctx.job_id, "technique": config.type, "removed": facts["removed_fraction"]},
    )
    return product


def _attention_to_prune(
    model: nn.Module, config: StructuredPruneConfig, protected: set[str]
) -> tuple[list[AttentionLayout], list[str]]:
    """The unprotected attention layouts whose heads can go, and unprotected attention that cannot.

    Attention that cannot lose heads keeps them and is reported: fused projections (SigLIP's pooling head) and
    torch's `nn.MultiheadAttention`, whose packed q/k/v share the residual width, so heads cannot leave without
    replacing the module. When no attention layer of the model can lose heads (ACT's encoder and decoder are all
    `nn.MultiheadAttention`), the rest of the model is pruned: channels and MLP neurons.
    """
    layouts, unsupported = find_attention(model)
    unsupported = [name for name in unsupported if name not in protected]
    layouts = [layout for layout in layouts if layout.name not in protected]
    if config.prune_heads and unsupported and not layouts:
        layer = dict(model.named_modules())[unsupported[0]]
        _log.info(
            "attention heads kept",
            extra={"layer": unsupported[0], "type": type(layer).__name__, "layers": len(unsupported)},
        )
    return layouts, unsupported


_NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def _buffer_norm_pruners(model: nn.Module) -> dict[type, Any]:
    """Pruners for per-channel norms held in buffers, not parameters (torchvision's FrozenBatchNorm2d in ACT's and
    Diffusion Policy's ResNet): torch-pruning knows none, and a conv that loses channels before one breaks the
    forward pass."""
    import torch_pruning as tp

    class BufferNormPruner(tp.pruner.function.BasePruningFunc):
        """Slice every per-channel buffer of the norm; input and output channels are the same channels."""

        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            keep = sorted(set(range(self.get_out_channels(layer))) - set(idxs))
            for name in _NORM_BUFFERS:
                setattr(layer, name, getattr(layer, name).data[keep].clone())
            if hasattr(layer, "num_features"):
                layer.num_features = len(keep)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[0])

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[0])

    kinds = {
        type(layer)
        for layer in model.modules()
        if not list(layer.parameters(recurse=False))
        and all(isinstance(layer._buffers.get(name), torch.Tensor) for name in _NORM_BUFFERS)
        and len({layer._buffers[name].shape for name in _NORM_BUFFERS}) == 1
        and layer._buffers["weight"].dim() == 1
    }
    return {kind: BufferNormPruner() for kind in kinds}


def _residual_writers(model: nn.Module, attention: list[nn.Module]) -> set[nn.Module]:
    """Layers whose outputs are as wide as a kept attention's embedding: they write the residual stream.

    A kept attention layer hides from the dependency graph that its input and output width is the residual
    width (ACT adds learned position embeddings and state projections into it), so every Linear or conv that
    writes that width keeps its outputs; their input channels are still pruned with the layers before them.
    """
    widths = {
        int(layer.embed_dim) for layer in attention if isinstance(getattr(layer, "embed_dim", None), int)
    }
    if not widths:
        return set()
    return {
        layer
        for layer in model.modules()
        if (isinstance(layer, nn.Linear) and layer.out_features in widths)
        or (isinstance(layer, nn.modules.conv._ConvNd) and layer.out_channels in widths)
    }


def _width_facts(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, Any]:
    """New widths of the layers that changed and the parameters those layers lost."""
    changed = {name: width for name, width in before.items() if after.get(name, width)[:2] != width[:2]}
    touched_before = sum(width[2] for width in changed.values())
    touched_after = sum(after[name][2] for name in changed)
    return {
        "pruned_layers_parameters_before": touched_before,
        "pruned_layers_parameters_after": touched_after,
        "pruned_layers_removed_fraction": (
            round(1 - touched_after / touched_before, 6) if touched_before else 0.0
        ),
        "layer_widths": {name: [list(width[:2]), list(after[name][:2])] for name, width in changed.items()},
    }
