"""Which models are robot policies, and which of their outputs are actions: the one place that decides whether
accuracy without labels is judged in action space (how far the optimized policy's actions move from the
original's, over whole action chunks) rather than by output cosine.

A policy is a bundled reference policy (`vla`, `conv_policy`, `reacher`, by name or by architecture) or any
model whose loader recorded `metadata["policy"]` (LeRobot's loader: type, chunk_size, action_dim,
n_action_steps). Output cosine stays in the report beside the action error, but is not what a policy is judged
by: ACT's INT8 kept cosine 0.98 while its actions moved by 19.7%.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tools.evaluation.types import ACTION_ERROR_METRIC
from tools.intake import LoadedModel

POLICY_REFERENCES = frozenset({"vla", "conv_policy", "reacher"})
"""Bundled reference models that are policies (their outputs are actions)."""
POLICY_ARCHITECTURES = frozenset(
    {
        "tools.reference.vla:TinyVLA",
        "tools.reference.conv_policy:ConvPolicy",
        "tools.reference.reacher:ReacherPolicy",
    }
)
"""`--arch` values of the reference policies, for when their weights are given as files."""


def policy_facts(model: LoadedModel) -> dict[str, Any] | None:
    """The policy description a loader recorded (type, chunk_size, action_dim, n_action_steps), if any."""
    facts = model.metadata.get("policy")
    return dict(facts) if isinstance(facts, dict) and facts else None


def is_policy(model: LoadedModel, reference: str | None = None) -> bool:
    """Whether `model` is a robot policy, so that fidelity is judged on its actions."""
    if reference in POLICY_REFERENCES or policy_facts(model) is not None:
        return True
    return (model.options.architecture or "") in POLICY_ARCHITECTURES


def action_indices(
    outputs: Sequence[torch.Tensor], reference: LoadedModel, logits: Sequence[int]
) -> list[int]:
    """The outputs that are actions: those whose last axis is the recorded action_dim, else every float output
    that is not class scores, else all of them."""
    facts = policy_facts(reference) or {}
    action_dim = facts.get("action_dim")
    if isinstance(action_dim, int) and action_dim > 0:
        matching = [i for i, out in enumerate(outputs) if out.ndim >= 1 and out.shape[-1] == action_dim]
        if matching:
            return matching
    floats = [i for i, out in enumerate(outputs) if out.is_floating_point() and i not in set(logits)]
    return floats or list(range(len(outputs)))


def action_agreement(
    reference: Sequence[Sequence[torch.Tensor]],
    candidate: Sequence[Sequence[torch.Tensor]],
    indices: list[int],
) -> dict[str, float]:
    """Action error of the candidate over every sample's whole action chunk (all action outputs together).

    `action_rel_error`: relative L2 over everything; `worst_chunk_rel_error`: the largest per-sample relative L2;
    `action_max_abs_error` and `action_rmse` in the actions' own units (normalized units for LeRobot policies
    whose postprocessor is not part of the model)."""
    ref = torch.cat([_rows(batch, indices) for batch in reference]).double()
    cand = torch.cat([_rows(batch, indices) for batch in candidate]).double()
    diff = cand - ref
    per_chunk = diff.norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)
    return {
        ACTION_ERROR_METRIC: float(diff.norm() / ref.norm().clamp_min(1e-12)),
        "worst_chunk_rel_error": float(per_chunk.max()),
        "action_max_abs_error": float(diff.abs().max()),
        "action_rmse": float(diff.pow(2).mean().sqrt()),
        "action_chunks": int(ref.shape[0]),
    }


def _rows(batch: Sequence[torch.Tensor], indices: list[int]) -> torch.Tensor:
    """One row per sample: the sample's action outputs flattened and joined (a whole chunk per row)."""
    rows = batch[indices[0]].shape[0] if batch[indices[0]].ndim else 1
    return torch.cat([batch[i].reshape(rows, -1).float() for i in indices], dim=1)
