"""Low-rank factorization: replace a Linear layer W (out x in) by two thinner ones from its truncated SVD.

`W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)`, so `Linear(in, out)` becomes `Linear(in, r, bias=False)` followed by
`Linear(r, out)`. The rank comes per layer from the singular-value energy kept, or from one parameter budget
shared by all layers. A layer is left dense where the factorization would not save parameters.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tools.errors import NotApplicableError, OptimizationError
from tools.log import get_logger
from tools.techniques.artifacts import TORCH_INPUTS, save_module_product
from tools.techniques.base import (
    Family,
    ProgressCallback,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register
from tools.techniques.selection import ProtectedLayersConfig, reason_summary, select_linear_layers

_log = get_logger("compression.lowrank")


class LowRankConfig(ProtectedLayersConfig):
    """Factorize Linear layers into two thin Linear layers initialised from their truncated SVD."""

    type: Literal["low_rank"] = "low_rank"
    rank_selection: Literal["energy", "budget"] = Field(
        default="energy",
        description="'energy': per layer, the smallest rank whose singular values keep `energy` of the "
        "squared Frobenius norm. 'budget': ranks chosen greedily over all layers by energy gained per "
        "parameter until the factorized layers hold at most `budget` of their original weights.",
        json_schema_extra={"search": ["energy", "budget"]},
    )
    energy: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        description="Fraction of each layer's squared singular values kept (rank_selection='energy').",
        json_schema_extra={"search": [0.8, 0.9, 0.95, 0.99]},
    )
    budget: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="Parameters (weights and biases) the factorized layers may keep, as a fraction of "
        "their original ones (rank_selection='budget').",
        json_schema_extra={"search": [0.25, 0.5, 0.75]},
    )
    min_layer_params: int = Field(
        default=4096, ge=1, description="Layers whose weight has fewer elements are left dense."
    )
    protected: tuple[str, ...] = Field(
        default=("*lm_head*",),
        description="Glob patterns (fnmatch) of qualified module names left dense, e.g. 'action_head.*'.",
    )
    protect_output_layer: bool = Field(
        default=True,
        description="Leave the model's last Linear layer (in registration order: the action or logits "
        "head output) dense.",
    )


class LowRankLinear(nn.Module):
    """`Linear(in, out)` as `up(down(x))`: down is in -> rank without bias, up is rank -> out with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, linear: nn.Linear, up: torch.Tensor, down: torch.Tensor) -> "LowRankLinear":
        """Build the module replacing `linear` from factors with `up @ down ~ linear.weight`."""
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, down.shape[0], bias=linear.bias is not None)
        with torch.no_grad():
            module.down.weight.copy_(down.to(weight.dtype))
            module.up.weight.copy_(up.to(weight.dtype))
            if linear.bias is not None:
                module.up.bias.copy_(linear.bias)
        return module.to(weight.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(hidden))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def gram_spectrum(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decompose W W^T or W^T W (the smaller) in float64: (squared singular values desc, their vectors).

    On a 1024 x 2944 weight the symmetric eigensolver on the Gram matrix was 10-40x faster than LAPACK's SVD
    on CPU; float64 keeps the kept components exact to ~1e-6 despite squaring the condition number.
    """
    matrix = weight.detach().to("cpu", torch.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    values, vectors = torch.linalg.eigh(gram)
    return values.flip(0).clamp(min=0.0), vectors.flip(1)


def truncated_factors(
    weight: torch.Tensor, rank: int, spectrum: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (up, down), out x rank and rank x in, whose product is the best rank-`rank` approximation.

    up = U_r sqrt(S_r) and down = sqrt(S_r) V_r^T; `spectrum` is `gram_spectrum(weight)` when already known.
    """
    matrix = weight.detach().to("cpu", torch.float64)
    squared, vectors = spectrum if spectrum is not None else gram_spectrum(matrix)
    basis = vectors[:, :rank]
    root = squared[:rank].sqrt().sqrt()  # sqrt(S)
    inverse = torch.where(root > 0, 1.0 / root.clamp(min=1e-150), torch.zeros_like(root))
    if matrix.shape[0] <= matrix.shape[1]:  # basis = U_r, so V_r^T = S^-1 U_r^T W
        return (basis * root[None, :]).float(), (inverse[:, None] * (basis.T @ matrix)).float()
    # basis = V_r, so U_r = W V_r S^-1
    return ((matrix @ basis) * inverse[None, :]).float(), (root[:, None] * basis.T).float()


# Eigenvectors kept between rank selection and factorization, beyond which they are recomputed instead.
_KEPT_VECTOR_BYTES = 512 * 1024 * 1024


@dataclass
class _Candidate:
    """A Linear layer that may be factorized, with its squared singular values (descending)."""

    name: str
    linear: nn.Linear
    squared: torch.Tensor
    vectors: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.linear.out_features, self.linear.in_features

    @property
    def full_rank(self) -> int:
        return min(self.shape)

    @property
    def dense_params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def bias_params(self) -> int:
        return 0 if self.linear.bias is None else self.linear.bias.numel()

    @property
    def params_per_rank(self) -> int:
        return self.shape[0] + self.shape[1]

    @property
    def max_saving_rank(self) -> int:
        """Largest rank r with r * (in + out) < in * out (0 when no rank saves parameters)."""
        return (self.dense_params - 1) // self.params_per_rank

    def energy_shares(self) -> torch.Tensor:
        """Fraction of the layer's squared singular values carried by each component."""
        total = float(self.squared.sum())
        if total == 0.0:
            return torch.full_like(self.squared, 1.0 / len(self.squared))
        return self.squared / total

    def retained_energy(self, rank: int) -> float:
        """Fraction of squared singular values kept by rank `rank`."""
        return float(self.energy_shares()[:rank].sum())


def ranks_by_energy(candidates: list[_Candidate], energy: float) -> tuple[dict[str, int], dict[str, str]]:
    """Per layer, the smallest rank keeping `energy`; layers where that rank saves nothing are skipped."""
    ranks, skipped = {}, {}
    for candidate in candidates:
        cumulative = candidate.energy_shares().cumsum(0)
        rank = min(int((cumulative < energy).sum()) + 1, candidate.full_rank)
        if rank > candidate.max_saving_rank:
            out_features, in_features = candidate.shape
            skipped[candidate.name] = (
                f"no saving: rank {rank} keeps {energy:g} energy but {rank}*({in_features}+{out_features}) >= "
                f"{in_features}*{out_features}"
            )
        else:
            ranks[candidate.name] = rank
    return ranks, skipped


def ranks_by_budget(candidates: list[_Candidate], budget: float) -> tuple[dict[str, int], dict[str, str]]:
    """Choose ranks greedily by energy gained per parameter until the layers hold <= `budget` of their params.

    Parameters count weights and biases (biases are kept as they are). Energy is each layer's fraction of its
    own squared singular values, so layers of different scale compare.
    """
    skipped = {
        c.name: f"no saving: no rank saves parameters for shape {c.shape}"
        for c in candidates
        if c.max_saving_rank < 1
    }
    usable = [c for c in candidates if c.max_saving_rank >= 1]
    allowed = budget * sum(c.dense_params + c.bias_params for c in usable)
    ranks = {c.name: 1 for c in usable}
    used = sum(c.params_per_rank + c.bias_params for c in usable)
    if usable and used > allowed:
        raise OptimizationError(
            f"a budget of {budget:g} allows {int(allowed)} parameters but rank 1 in every eligible layer "
            f"already needs {used}",
            hint="raise the budget, or protect small layers / raise min_layer_params",
        )
    gains = {c.name: c.energy_shares() for c in usable}
    heap = [
        (-float(gains[c.name][1]) / c.params_per_rank, i) for i, c in enumerate(usable) if c.full_rank > 1
    ]
    heapq.heapify(heap)
    while heap:
        _priority, index = heapq.heappop(heap)
        candidate = usable[index]
        rank = ranks[candidate.name]
        if rank >= candidate.max_saving_rank or used + candidate.params_per_rank > allowed:
            continue  # this layer is full or no longer fits; smaller layers may still fit
        ranks[candidate.name] = rank + 1
        used += candidate.params_per_rank
        if rank + 1 < candidate.full_rank:
            heapq.heappush(heap, (-float(gains[candidate.name][rank + 1]) / candidate.params_per_rank, index))
    return ranks, skipped


def factorize_linear_layers(
    model: nn.Module, config: LowRankConfig, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Replace the model's eligible Linear layers in place; return the facts (ranks, energy, parameters)."""
    report = progress or (lambda _percent, _message: None)
    params_before = sum(p.numel() for p in model.parameters())
    eligible, skipped = select_linear_layers(
        model, config.protected, config.protect_output_layer, config.min_layer_params
    )
    report(25, f"low_rank: decomposing {len(eligible)} Linear layers")
    candidates, kept_bytes = [], 0
    for name, linear in eligible:
        squared, vectors = gram_spectrum(linear.weight)
        kept_bytes += vectors.numel() * vectors.element_size()
        keep = kept_bytes <= _KEPT_VECTOR_BYTES
        candidates.append(_Candidate(name, linear, squared, vectors if keep else None))
    report(50, f"low_rank: choosing ranks by {config.rank_selection}")
    if config.rank_selection == "energy":
        ranks, unprofitable = ranks_by_energy(candidates, config.energy)
    else:
        ranks, unprofitable = ranks_by_budget(candidates, config.budget)
    skipped.update(unprofitable)
    if not ranks:
        considered = len(skipped)
        raise NotApplicableError(
            f"low_rank factorized nothing: of {considered} Linear layers none qualified "
            f"({reason_summary(skipped) or 'the model has no nn.Linear layers'})",
            hint="lower `energy`, use rank_selection='budget', lower min_layer_params or protect fewer layers",
            detail={"skipped": skipped},
        )
    report(75, f"low_rank: factorizing {len(ranks)} layers")
    layers: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        rank = ranks.get(candidate.name)
        if rank is None:
            continue
        linear = candidate.linear
        spectrum = None if candidate.vectors is None else (candidate.squared, candidate.vectors)
        up, down = truncated_factors(linear.weight, rank, spectrum)
        model.set_submodule(candidate.name, LowRankLinear.from_factors(linear, up, down))
        bias = candidate.bias_params
        layers[candidate.name] = {
            "shape": list(candidate.shape),
            "rank": rank,
            "full_rank": candidate.full_rank,
            "retained_energy": round(candidate.retained_energy(rank), 6),
            "params_before": candidate.dense_params + bias,
            "params_after": rank * candidate.params_per_rank + bias,
        }
    params_after = sum(p.numel() for p in model.parameters())
    before = sum(layer["params_before"] for layer in layers.values())
    after = sum(layer["params_after"] for layer in layers.values())
    return {
        "rank_selection": config.rank_selection,
        "energy": config.energy if config.rank_selection == "energy" else None,
        "budget": config.budget if config.rank_selection == "budget" else None,
        "layers_factorized": len(layers),
        "layers_skipped": len(skipped),
        "layers": layers,
        "skipped": skipped,
        "factorized_params_before": before,
        "factorized_params_after": after,
        "factorized_fraction": after / before,
        "params_before": params_before,
        "params_after": params_after,
        "param_reduction": 1.0 - params_after / params_before,
    }


@register(
    LowRankConfig,
    TechniqueSpec(
        name="low_rank",
        family=Family.COMPRESSION,
        summary="Replace Linear layers by two thin Linear layers from a truncated SVD (energy or budget ranks).",
        input_formats=TORCH_INPUTS,
        output_format="torch_pickled_module",
        runtimes=("torch-cpu", "torch-cuda"),
        precision="fp32",
        expected_effect="Fewer parameters and a smaller file where weights are low rank; layers whose rank "
        "would not pay stay dense. Small policies trained from scratch have flat spectra: on the reference "
        "VLA energy 0.95 factorizes only the FiLM layers (-0.8% parameters, action cosine 0.999), energy 0.8 "
        "gives -27% (cosine 0.99), budget 0.5 gives -49% parameters and a 51% file (cosine 0.994). Batch-1 "
        "CPU latency is unchanged within noise (one extra small matmul per layer).",
    ),
)
def _apply_low_rank(ctx: TechniqueContext, config: LowRankConfig) -> TechniqueProduct:
    model = ctx.require_module("low_rank")
    with torch.no_grad():
        facts = factorize_linear_layers(model, config, ctx.progress)
    _log.info(
        "factorized linear layers",
        extra={
            "job_id": ctx.job_id,
            "technique": "low_rank",
            "layers": facts["layers_factorized"],
            "param_reduction": facts["param_reduction"],
        },
    )
    return save_module_product(ctx, model, facts)
