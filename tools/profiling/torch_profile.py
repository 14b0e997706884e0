"""Profile a torch module: weights by component, layer type and dtype; FLOPs by op and component; structure.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over one real forward pass on the example inputs.
The fused multi-head-attention fast path (which the counter cannot see) is switched off for that pass.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tools.errors import MeasurementError, first_line
from tools.log import get_logger
from tools.profiling.common import WeightRecord, conv_backbones, dtype_name
from tools.profiling.components import (
    ROOT,
    ComponentIndex,
    ComponentSpec,
    TreeNode,
    child_path,
    split_components,
    tokens,
    tree_from_paths,
)
from tools.profiling.schema import ConvBackbone, OpFlops, TransformerStack

log = get_logger("profiling")

_CONV = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_NORM_RE = re.compile(r"Norm(\d[dD])?$")
_ATTENTION_WORDS = {"attn", "attention", "qkv"}
# Kernels that reach the counter undecomposed; a name like these without a formula means uncounted work.
_HEAVY_OP_RE = re.compile(r"attention|conv|mm|linear|matmul|einsum|^quantized\.")


def type_name(module: torch.nn.Module) -> str:
    """Return a module's class name, the original one for TorchScript modules."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


def collect_weights(module: torch.nn.Module) -> tuple[list[WeightRecord], list[str], int]:
    """Return one record per distinct parameter, the names of tied aliases, and the bytes held in buffers."""
    modules = dict(module.named_modules(remove_duplicate=False))
    seen: set[tuple[Any, ...]] = set()
    records: list[WeightRecord] = []
    tied: list[str] = []
    for name, param in module.named_parameters(remove_duplicate=False):
        key = _tensor_key(param)
        if key in seen:
            tied.append(name)
            continue
        seen.add(key)
        owner = name.rpartition(".")[0]
        records.append(_record(name, param, type_name(modules.get(owner, module)), owner))
    for path, sub in modules.items():
        # torch.ao dynamically quantized layers keep packed weights that are neither parameters nor buffers
        if type(sub).__module__.startswith("torch.ao.nn.quantized") and callable(
            getattr(sub, "weight", None)
        ):
            for attr in ("weight", "bias"):
                tensor = getattr(sub, attr)() if callable(getattr(sub, attr, None)) else None
                if isinstance(tensor, torch.Tensor) and _tensor_key(tensor) not in seen:
                    seen.add(_tensor_key(tensor))
                    records.append(_record(child_path(path, attr), tensor, type_name(sub), path))
    buffer_bytes = sum(b.numel() * b.element_size() for _, b in module.named_buffers())
    return records, tied, buffer_bytes


def _record(name: str, tensor: torch.Tensor, layer_type: str, owner: str) -> WeightRecord:
    numel = tensor.numel()
    return WeightRecord(
        name, numel, numel * tensor.element_size(), dtype_name(tensor.dtype), layer_type, owner
    )


def _tensor_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Identify a tensor's memory so that weights tied through different Parameter objects count once."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        pointer = 0
    if pointer == 0 or tensor.device.type == "meta":
        return ("id", id(tensor))
    return (
        "ptr",
        tensor.device.type,
        pointer,
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
    )


def module_tree(module: torch.nn.Module) -> TreeNode:
    """Build the component tree of a module, with every descendant's class name gathered at each node."""
    return tree_from_paths((path, type_name(sub), {type_name(sub)}) for path, sub in module.named_modules())


def component_index(module: torch.nn.Module) -> ComponentIndex:
    """Split a module into components and return the index that maps names to them.

    A module that knows its own parts (`component_roles()` -> (wrapper path, {child name: role}), as
    LeRobot policies do) is split at that wrapper's children with those roles; others by name rules.
    """
    declared = getattr(module, "component_roles", None)
    if callable(declared):
        wrapper, roles = declared()
        parent = module.get_submodule(wrapper)
        specs = [
            ComponentSpec(child_path(wrapper, name), roles.get(name, "other"), type_name(child))
            for name, child in parent.named_children()
        ]
        parts = wrapper.split(".")
        opened = [""] + [".".join(parts[: end + 1]) for end in range(len(parts))]
        return ComponentIndex(specs, opened)
    return ComponentIndex(*split_components(module_tree(module)))


@dataclass
class ForwardStats:
    """What one counted forward pass gave: outputs, FLOPs in total, by op and by module path."""

    outputs: Any
    total: int | None = None
    by_op: list[OpFlops] = field(default_factory=list)
    by_module: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _OpRecorder(TorchDispatchMode):
    """Record the name of every op dispatched, to spot heavy kernels the FLOP counter cannot count."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.add(str(func._overloadpacket))
        return func(*args, **(kwargs or {}))


def _sdpa_flops(
    query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of a fused attention kernel from its q/k/v shapes (same formula torch uses on GPU kernels)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas FlopCounterMode lacks: CPU's flash attention kernel, which HF models use by default on CPU."""
    names = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    return {getattr(torch.ops.aten, n): _sdpa_flops for n in names if hasattr(torch.ops.aten, n)}


def count_flops(module: torch.nn.Module, run: Callable[[], Any]) -> ForwardStats:
    """Run `run` once in eval mode under FlopCounterMode; return outputs and FLOPs, restore the module."""
    was_training = module.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    module.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
        recorder = _OpRecorder()
        try:
            # the recorder sits below the counter, so it sees the kernels that the counter passed on
            with recorder, counter:
                outputs = run()
        except Exception as exc:  # noqa: BLE001 - the counter fails on some TorchScript graphs
            stats = ForwardStats(outputs=_plain_forward(run))
            stats.warnings.append(
                f"FLOP counting failed ({type(exc).__name__}: {first_line(exc)}); FLOPs are unknown"
            )
            return stats
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        module.train(was_training)
    counts = counter.get_flop_counts()
    root_key = type(module).__name__
    by_module: dict[str, int] = {}
    for key, per_op in counts.items():
        if key == root_key:
            by_module[""] = sum(per_op.values())
        elif key.startswith(root_key + "."):
            by_module[key[len(root_key) + 1 :]] = sum(per_op.values())
    by_op = [OpFlops(op=str(op), flops=int(n)) for op, n in counts.get("Global", {}).items() if n]
    registry = {str(op) for op in counter.flop_registry}
    uncounted = sorted(op for op in recorder.ops if op not in registry and _HEAVY_OP_RE.search(op))
    return ForwardStats(
        outputs=outputs,
        total=int(counter.get_total_flops()),
        by_op=sorted(by_op, key=lambda o: -o.flops),
        by_module=by_module,
        uncounted=uncounted,
    )


def _plain_forward(run: Callable[[], Any]) -> Any:
    """Run the forward pass without counting; raise MeasurementError when the model fails."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model is reported the same way
        raise MeasurementError(
            f"the model's forward pass failed on its example inputs: {type(exc).__name__}: {first_line(exc)}",
            hint="check the input specs (--input-shape) against what the model's forward() expects",
        ) from exc


def component_flops(index: ComponentIndex, by_module: dict[str, int]) -> dict[str, int]:
    """Map module FLOPs onto components; opened wrappers and the root keep what their own forward() spent.

    A component's FLOPs are those of its topmost modules that ran (a ModuleList never runs, its blocks do).
    """
    flops = {path: 0 for path in index.specs}
    for key, count in by_module.items():
        component = index.component_of(key + ".x") if key else ROOT
        if component not in flops:
            continue
        parts, depth = key.split("."), component.count(".") + 1
        if not any(".".join(parts[:end]) in by_module for end in range(depth, len(parts))):
            flops[component] += count
    for bucket in sorted(index.opened, key=lambda p: -len(p)):
        under = sum(n for path, n in flops.items() if not bucket or path.startswith(bucket + "."))
        own = by_module.get(bucket, 0) - under
        if own > 0:
            flops[bucket or ROOT] = own
    return flops


# --- structure -------------------------------------------------------------------------------------------


def find_stacks(module: torch.nn.Module, index: ComponentIndex) -> list[TransformerStack]:
    """Find lists of repeated blocks that contain attention, and read their width, heads and MLP size."""
    stacks: list[TransformerStack] = []
    for path, container in module.named_modules():
        children = list(container.named_children())
        if not children or not all(name.isdigit() for name, _ in children):
            continue
        if any(path.startswith(s.path + ".") for s in stacks):
            continue
        block = children[0][1]
        attention = [(n, m) for n, m in block.named_modules() if n and _is_attention(n, m)]
        if not attention:
            continue
        hidden, heads, kv_heads = _attention_shape(attention[0][1], block)
        component = index.component_of(child_path(path, "0"))
        stacks.append(
            TransformerStack(
                path=path,
                component=component,
                role=index.role_of(component),
                blocks=len(children),
                block_type=Counter(type_name(m) for _, m in children).most_common(1)[0][0],
                hidden_size=hidden,
                attention_heads=heads,
                kv_heads=kv_heads,
                mlp_width=_mlp_width(block, [n for n, _ in attention], hidden),
            )
        )
    return stacks


def _is_attention(name: str, module: torch.nn.Module) -> bool:
    """Say whether a module is attention by its name or class name."""
    return bool((tokens(name.rsplit(".", 1)[-1]) | tokens(type_name(module))) & _ATTENTION_WORDS)


def _int_attr(obj: Any, *names: str) -> int | None:
    """Return the first positive integer attribute among `names`, or None."""
    for name in names:
        value = getattr(obj, name, None) if obj is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _attention_shape(
    attention: torch.nn.Module, block: torch.nn.Module
) -> tuple[int | None, int | None, int | None]:
    """Read hidden size, query heads and key/value heads from attributes, the config, or projection shapes."""
    config = getattr(attention, "config", None)
    heads = _int_attr(attention, "num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
    heads = heads or _int_attr(config, "num_attention_heads")
    kv_heads = _int_attr(attention, "num_key_value_heads", "num_kv_heads", "n_kv_heads")
    kv_heads = kv_heads or _int_attr(config, "num_key_value_heads")
    hidden = _int_attr(attention, "embed_dim", "hidden_size", "d_model") or _int_attr(config, "hidden_size")
    head_dim = _int_attr(attention, "head_dim")
    q_weight = _projection_weight(attention, {"q", "query", "wq"})
    k_weight = _projection_weight(attention, {"k", "key", "wk"})
    in_proj = getattr(attention, "in_proj_weight", None)
    if hidden is None and q_weight is not None:
        hidden = int(q_weight.shape[1])
    if hidden is None and isinstance(in_proj, torch.Tensor) and in_proj.dim() == 2:
        hidden = int(in_proj.shape[1])
    if heads is None and head_dim and q_weight is not None:
        heads = int(q_weight.shape[0]) // head_dim
    if kv_heads is None and heads and q_weight is not None and k_weight is not None:
        kv_heads = heads * int(k_weight.shape[0]) // int(q_weight.shape[0])
    if hidden is None:
        norms = [m for _, m in block.named_modules() if _NORM_RE.search(type_name(m))]
        weight = getattr(norms[0], "weight", None) if norms else None
        hidden = int(weight.numel()) if isinstance(weight, torch.Tensor) else None
    return hidden, heads, kv_heads


def _projection_weight(attention: torch.nn.Module, names: set[str]) -> torch.Tensor | None:
    """Return the 2-D weight of the first projection whose name matches `names` (q, k, ...)."""
    for name, sub in attention.named_modules():
        weight = getattr(sub, "weight", None)
        if (
            name
            and tokens(name.rsplit(".", 1)[-1]) & names
            and isinstance(weight, torch.Tensor)
            and weight.dim() == 2
        ):
            return weight
    return None


def _mlp_width(block: torch.nn.Module, attention_paths: list[str], hidden: int | None) -> int | None:
    """Return the widest linear layer of the block outside attention that reads the hidden size."""
    if hidden is None:
        return None
    widths = []
    for name, sub in block.named_modules():
        if any(name == a or name.startswith(a + ".") for a in attention_paths) or "Linear" not in type_name(
            sub
        ):
            continue
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == hidden:
            widths.append(int(weight.shape[0]))
    return max(widths) if widths else None


def find_convs(module: torch.nn.Module, index: ComponentIndex) -> list[ConvBackbone]:
    """Summarize convolutions per component."""
    per_component: dict[str, list[tuple[int, int, bool]]] = {}
    for path, sub in module.named_modules():
        kind = type_name(sub)
        if kind not in _CONV:
            continue
        weight = getattr(sub, "weight", None)
        out = _int_attr(sub, "out_channels") or (
            int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 0
        )
        stride = getattr(sub, "stride", 1)
        step = max(stride) if isinstance(stride, (tuple, list)) else int(stride)
        per_component.setdefault(index.component_of(child_path(path, "weight")), []).append(
            (out, step, kind.startswith("ConvTranspose"))
        )
    return conv_backbones(per_component, index)


def linear_layers(module: torch.nn.Module, index: ComponentIndex) -> dict[str, int]:
    """Count weight-bearing linear layers per component."""
    counts: Counter[str] = Counter()
    for path, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if "Linear" in type_name(sub) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            counts[index.component_of(child_path(path, "weight"))] += 1
    return dict(counts)


def normalization_types(module: torch.nn.Module) -> list[str]:
    """Return the normalization layer classes the module uses."""
    return sorted({type_name(m) for m in module.modules() if _NORM_RE.search(type_name(m))})


def action_hint(module: torch.nn.Module, config: dict[str, Any]) -> bool:
    """Say whether class names or the config speak of actions (a VLA whose actions are LM tokens)."""
    if "action" in tokens(type_name(module)):
        return True
    return config_mentions_action(config)


def config_mentions_action(config: Any) -> bool:
    """Say whether a nested config has action keys, OpenVLA's norm_stats, or an *Action* architecture."""
    if isinstance(config, dict):
        return any(
            "action" in str(k).lower() or k == "norm_stats" or config_mentions_action(v)
            for k, v in config.items()
        )
    if isinstance(config, list):
        return any(isinstance(v, str) and "action" in tokens(v) or config_mentions_action(v) for v in config)
    return False
