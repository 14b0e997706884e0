"""Helpers shared by the pruning techniques: parameter counts, calibration inputs, the outputs of a module on
them, the fidelity of a pruned module to the original, and attention layouts whose heads can be removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tools.techniques.base import TechniqueContext
from tools.techniques.module_io import call_module, output_tensors


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


@torch.inference_mode()
def model_outputs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Run `model` on each batch and return its float outputs as CPU float32 tensors."""
    model.eval()
    return [[t.detach().float().cpu() for t in output_tensors(call_module(model, b))] for b in batches]


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
