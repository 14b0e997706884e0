"""Helpers shared by the pruning techniques: protected-name matching, parameter counts, running a module on
named inputs, and the fidelity of a pruned module to the original on the same inputs.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from tools.intake.types import LoadOptions, ModelFormat
from tools.techniques.artifacts import save_torch_module
from tools.techniques.base import TechniqueContext

TORCH_INPUTS = (
    ModelFormat.TORCH_PICKLED_MODULE.value,
    ModelFormat.TORCH_STATE_DICT.value,
    ModelFormat.SAFETENSORS.value,
    ModelFormat.HF_DIRECTORY.value,
)
REGEX_PREFIX = "re:"
PROTECTED_DESCRIPTION = (
    "Module-name patterns left untouched with everything inside them: fnmatch globs on qualified names "
    "('action_head', 'action_head*', '*embed*'), or a regular expression after 're:' ('re:blocks\\.0\\.')."
)


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse empty patterns and regular expressions that do not compile (pydantic field validator body)."""
    for pattern in patterns:
        if not pattern.strip():
            raise ValueError("a protected pattern must not be empty")
        if pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(pattern[len(REGEX_PREFIX) :])
            except re.error as exc:
                raise ValueError(f"protected pattern {pattern!r} is not a valid regular expression: {exc}")
    return patterns


def name_matches(name: str, pattern: str) -> bool:
    """Whether qualified module name `name` matches one glob or 're:'-regex pattern."""
    if pattern.startswith(REGEX_PREFIX):
        return re.search(pattern[len(REGEX_PREFIX) :], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def is_protected(name: str, patterns: Iterable[str]) -> bool:
    """Whether module `name` or one of the modules containing it matches a protected pattern."""
    parts = name.split(".") if name else []
    scopes = [".".join(parts[: index + 1]) for index in range(len(parts))]
    return any(name_matches(scope, pattern) for scope in scopes for pattern in patterns)


def protected_module_names(model: nn.Module, patterns: Iterable[str]) -> set[str]:
    """Names of every module covered by `patterns` (a match protects all the modules inside it)."""
    patterns = tuple(patterns)
    if not patterns:
        return set()
    return {name for name, _ in model.named_modules() if name and is_protected(name, patterns)}


def unmatched_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Patterns that match no module name (likely typos; reported in the facts, not fatal)."""
    names = [name for name, _ in model.named_modules() if name]
    return [pattern for pattern in patterns if not any(is_protected(name, (pattern,)) for name in names)]


def save_pruned_module(model: nn.Module, ctx: TechniqueContext) -> tuple[Path, str, LoadOptions]:
    """Write the pruned module whole (see `save_torch_module`, which drops unpicklable HF hooks)."""
    return save_torch_module(model, ctx.work_dir, ctx.source.input_specs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, counting a tied (shared) parameter once."""
    return sum(parameter.numel() for parameter in model.parameters())


def input_names(ctx: TechniqueContext) -> list[str]:
    """The source model's input names, in spec order."""
    return [spec.name for spec in ctx.source.input_specs]


def calibration_inputs(ctx: TechniqueContext, limit: int) -> list[dict[str, torch.Tensor]]:
    """Up to `limit` calibration batches restricted to the model's inputs; the example inputs when none given."""
    names = input_names(ctx)
    if ctx.calibration is None:
        return [ctx.source.example_inputs(seed=index) for index in range(min(limit, 2))]
    return [
        {name: batch[name] for name in names if name in batch} for batch in ctx.calibration.batches[:limit]
    ]


def calibration_labels(ctx: TechniqueContext, limit: int) -> list[torch.Tensor] | None:
    """The labels aligned with `calibration_inputs(ctx, limit)`, when the calibration data has some."""
    if ctx.calibration is None or ctx.calibration.labels is None:
        return None
    return list(ctx.calibration.labels[:limit])


def call_model(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Any:
    """Call `model` with named inputs: by keyword when forward() accepts the names, else positionally."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return model(*inputs.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return model(**inputs)
    if set(inputs) <= {p.name for p in parameters}:
        return model(**inputs)
    return model(*inputs.values())


def output_tensors(raw: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a model's output, in order (HF outputs, tuples and dicts flattened)."""
    found: list[torch.Tensor] = []
    _collect(raw, found)
    return found


def _collect(value: Any, found: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            found.append(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _collect(item, found)
    elif hasattr(value, "to_tuple"):
        _collect(value.to_tuple(), found)


@torch.inference_mode()
def model_outputs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Run `model` on each batch and return its float outputs as CPU float32 tensors."""
    model.eval()
    return [[t.detach().float().cpu() for t in output_tensors(call_model(model, b))] for b in batches]


def output_shapes(outputs: list[list[torch.Tensor]]) -> list[list[tuple[int, ...]]]:
    """Shapes of `model_outputs`'s tensors, for checking that a transform kept the model's interface."""
    return [[tuple(t.shape) for t in batch] for batch in outputs]


def fidelity(reference: list[list[torch.Tensor]], candidate: list[list[torch.Tensor]]) -> dict[str, float]:
    """Mean per-sample cosine and relative L2 error of the first output against the reference."""
    cosines, errors = [], []
    for ref_batch, cand_batch in zip(reference, candidate):
        ref = ref_batch[0].reshape(ref_batch[0].shape[0], -1).double()
        cand = cand_batch[0].reshape(cand_batch[0].shape[0], -1).double()
        cosines.append(torch.nn.functional.cosine_similarity(ref, cand, dim=1, eps=1e-12))
        errors.append((ref - cand).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12))
    return {
        "output_cosine": round(float(torch.cat(cosines).mean()), 6),
        "output_relative_l2": round(float(torch.cat(errors).mean()), 6),
    }


@dataclass
class AttentionLayout:
    """An attention module with separate q/k/v/o Linear projections and a known head size.

    Query head h uses rows [h*head_dim, (h+1)*head_dim) of q_proj and the same columns of o_proj; key/value
    head g serves the `q_heads // kv_heads` consecutive query heads of group g (grouped-query attention).
    """

    name: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    head_dim: int

    @property
    def q_heads(self) -> int:
        """Query heads."""
        return self.q.out_features // self.head_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads."""
        return self.k.out_features // self.head_dim


_PROJECTIONS = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj", "out_proj"),
}


def find_attention(model: nn.Module) -> tuple[list[AttentionLayout], list[str]]:
    """Attention modules whose heads can be removed, and names of attention modules that cannot.

    Recognized: q/k/v/o (or query/key/value/out_proj) Linear children with a `head_dim` (or `num_heads`)
    attribute, the layout of TinyVLA, Llama, SigLIP and most Hugging Face models. Fused projections
    (`nn.MultiheadAttention`, a single `qkv` Linear) are reported as unsupported.
    """
    layouts, unsupported = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            unsupported.append(name)
            continue
        found = {key: _child_linear(module, names) for key, names in _PROJECTIONS.items()}
        if all(found.values()):
            head_dim = _head_dim(module, found["q"])
            q, k = found["q"], found["k"]
            if head_dim and not q.out_features % head_dim and not k.out_features % head_dim:
                if (q.out_features // head_dim) % (k.out_features // head_dim) == 0:
                    layouts.append(AttentionLayout(name, module, q, k, found["v"], found["o"], head_dim))
                    continue
            unsupported.append(name)
        elif (
            name
            and _named_attention(module)
            and any(isinstance(child, nn.Linear) for child in module.children())
        ):
            unsupported.append(name)
    return layouts, unsupported


def is_attention(module: nn.Module) -> bool:
    """Whether `module` is or holds an attention layer (recognized layout, fused projections or by its name)."""
    for child in module.modules():
        if isinstance(child, nn.MultiheadAttention) or _named_attention(child):
            return True
        if all(_child_linear(child, names) for names in _PROJECTIONS.values()):
            return True
    return False


def _named_attention(module: nn.Module) -> bool:
    """Whether the class name says attention (`LlamaAttention`, `BertSelfAttention`, `SdpaAttention`)."""
    return type(module).__name__.lower().endswith("attention")


def _child_linear(module: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for name in names:
        child = module._modules.get(name)
        if isinstance(child, nn.Linear):
            return child
    return None


def _head_dim(module: nn.Module, q: nn.Linear) -> int | None:
    head_dim = getattr(module, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    for attribute in ("num_heads", "num_attention_heads", "n_heads"):
        heads = getattr(module, attribute, None)
        if isinstance(heads, int) and heads > 0 and q.out_features % heads == 0:
            return q.out_features // heads
    return None
