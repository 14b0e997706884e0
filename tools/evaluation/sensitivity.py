"""Per-layer sensitivity: how much the outputs degrade when one layer (or block) alone is quantized or pruned.

Both analyses perturb one unit at a time in place, measure the degradation against the unmodified model on the
given inputs, and restore the exact original weights, so the module is bit-identical afterwards (it is also
kept in eval mode while measured, so batch-norm statistics never move). Results are ranked most sensitive
first; they feed the analysis (which layers to keep in higher precision, which blocks to prune).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tools.errors import RoboptError, ValidationError
from tools.evaluation.fidelity import Batches, aggregate_agreement, as_batches
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat
from tools.log import get_logger
from tools.techniques.artifacts import OutputAgreement, run_outputs

logger = get_logger("evaluation")

DegradationMetric = Literal["relative_l2", "cosine"]


class LayerSensitivity(BaseModel):
    """How much perturbing one layer or block degrades the model's outputs (higher score = more sensitive)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Qualified module name of the layer or block.")
    analysis: Literal["quantization", "pruning"]
    perturbation: str = Field(description="What was done, e.g. 'int4 per-channel RTN' or 'drop block'.")
    layer_type: str = Field(description="Class name of the module.")
    score: float = Field(description="Output degradation: worst relative L2, or 1 - lowest cosine.")
    metric: DegradationMetric
    params: int = Field(ge=0, description="Parameters of the weights that were perturbed.")
    layers: list[str] = Field(default_factory=list, description="Layers perturbed together (pruning).")


def quantization_sensitivity(
    module: nn.Module,
    inputs: Batches | Mapping[str, torch.Tensor],
    *,
    bits: int = 8,
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    metric: DegradationMetric = "relative_l2",
    max_layers: int | None = None,
) -> list[LayerSensitivity]:
    """Fake-quantize each layer's weight alone (per-output-channel symmetric RTN) and rank the layers.

    `max_layers` ranks only the largest layers by weight count (a sample that keeps a big policy's analysis
    short; see `count_weighted_layers` for how many there are)."""
    if not 2 <= bits <= 16:
        raise ValidationError(f"bits must be between 2 and 16, got {bits}")
    _check_metric(metric)
    layers = _largest(_weighted_layers(module, layer_types), max_layers)
    results = []
    with _measurement(module, inputs) as measure:
        for name, layer in layers:
            with _replaced_weights({layer.weight: fake_quantize(layer.weight.detach(), bits)}):
                score = measure(metric)
            results.append(
                LayerSensitivity(
                    name=name,
                    analysis="quantization",
                    perturbation=f"int{bits} per-channel symmetric RTN weights",
                    layer_type=type(layer).__name__,
                    score=score,
                    metric=metric,
                    params=layer.weight.numel(),
                    layers=[name],
                )
            )
    return _ranked(results)


def pruning_sensitivity(
    module: nn.Module,
    inputs: Batches | Mapping[str, torch.Tensor],
    *,
    ratio: float = 0.5,
    granularity: Literal["block", "layer"] = "block",
    mode: Literal["channels", "drop"] = "channels",
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    metric: DegradationMetric = "relative_l2",
    max_layers: int | None = None,
) -> list[LayerSensitivity]:
    """Prune one unit at a time and rank the units by the output degradation.

    `max_layers` keeps only the largest layers by weight count (units hold only those).

    `mode="channels"`: zero the `ratio` fraction of output channels (neurons) with the lowest L1 norm in
    every layer of the unit. A unit is, with `granularity="block"`, an item of an `nn.ModuleList` (a
    transformer block, a stem stage) or a layer outside any list; with "layer", each layer. `mode="drop"`:
    replace each item of an `nn.ModuleList` by a pass-through (skipping a residual block); items whose removal
    breaks the forward pass (changed shapes) are left out of the ranking.
    """
    if not 0.0 < ratio < 1.0:
        raise ValidationError(f"ratio must be in (0, 1), got {ratio}")
    if granularity not in ("block", "layer") or mode not in ("channels", "drop"):
        raise ValidationError(
            f"granularity must be 'block' or 'layer' and mode 'channels' or 'drop', "
            f"got {granularity!r}, {mode!r}"
        )
    _check_metric(metric)
    if mode == "drop":
        return _drop_sensitivity(module, inputs, layer_types, metric)
    layers = _largest(_weighted_layers(module, layer_types), max_layers)
    units = _group_units(module, layers) if granularity == "block" else {name: [name] for name, _ in layers}
    by_name = dict(layers)
    results = []
    with _measurement(module, inputs) as measure:
        for unit, members in units.items():
            replaced = {}
            for member in members:
                layer = by_name[member]
                replaced[layer.weight] = zero_weakest_channels(layer.weight.detach(), ratio)
                if getattr(layer, "bias", None) is not None:
                    replaced[layer.bias] = layer.bias.detach() * _kept_channels(layer.weight.detach(), ratio)
            with _replaced_weights(replaced):
                score = measure(metric)
            results.append(
                LayerSensitivity(
                    name=unit,
                    analysis="pruning",
                    perturbation=f"zero {ratio:.0%} lowest-L1 output channels",
                    layer_type=type(module.get_submodule(unit)).__name__,
                    score=score,
                    metric=metric,
                    params=sum(by_name[member].weight.numel() for member in members),
                    layers=list(members),
                )
            )
    return _ranked(results)


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round `weight` to a symmetric `bits`-bit grid with one scale per output channel (axis 0)."""
    qmax = 2 ** (bits - 1) - 1
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (
        (torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale).reshape(weight.shape).to(weight.dtype)
    )


def zero_weakest_channels(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Return `weight` with the `ratio` fraction of output channels of lowest L1 norm set to zero."""
    keep = _kept_channels(weight, ratio)
    return weight * keep.reshape(-1, *([1] * (weight.ndim - 1))).to(weight.dtype)


def _kept_channels(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """A 0/1 mask over output channels: 0 for the `ratio` fraction with the lowest L1 norm (ties by index)."""
    norms = weight.reshape(weight.shape[0], -1).abs().sum(dim=1)
    count = int(round(ratio * weight.shape[0]))
    keep = torch.ones(weight.shape[0], dtype=weight.dtype)
    keep[torch.argsort(norms, stable=True)[:count]] = 0
    return keep


def _drop_sensitivity(
    module: nn.Module,
    inputs: Batches | Mapping[str, torch.Tensor],
    layer_types: tuple[type[nn.Module], ...],
    metric: DegradationMetric,
) -> list[LayerSensitivity]:
    results = []
    with _measurement(module, inputs) as measure:
        for list_name, items in _module_lists(module):
            for index, block in enumerate(list(items)):
                name = f"{list_name}.{index}" if list_name else str(index)
                items[index] = _PassThrough()
                try:
                    score = measure(metric)
                except (RuntimeError, ValueError, TypeError, RoboptError) as exc:  # the model cannot skip it
                    logger.info("block %s cannot be dropped: %s", name, str(exc).splitlines()[0][:120])
                    continue
                finally:
                    items[index] = block
                results.append(
                    LayerSensitivity(
                        name=name,
                        analysis="pruning",
                        perturbation="drop block",
                        layer_type=type(block).__name__,
                        score=score,
                        metric=metric,
                        params=sum(p.numel() for p in block.parameters()),
                        layers=[
                            f"{name}.{n}" for n, m in block.named_modules() if isinstance(m, layer_types)
                        ],
                    )
                )
    return _ranked(results)


class _PassThrough(nn.Module):
    """Stands in for a dropped block: returns its first input unchanged."""

    def forward(self, hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden


def count_weighted_layers(
    module: nn.Module, layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
) -> int:
    """How many layers a full sensitivity ranking would perturb, one forward pass each."""
    return len(_weighted_layers(module, layer_types))


def _largest(layers: list[tuple[str, nn.Module]], limit: int | None) -> list[tuple[str, nn.Module]]:
    """The `limit` layers with the most weights (ties by name), in model order; all when `limit` is None."""
    if limit is None or len(layers) <= limit:
        return layers
    if limit < 1:
        raise ValidationError(f"max_layers must be at least 1, got {limit}")
    chosen = {name for name, _ in sorted(layers, key=lambda item: (-item[1].weight.numel(), item[0]))[:limit]}
    return [(name, layer) for name, layer in layers if name in chosen]


def _weighted_layers(
    module: nn.Module, layer_types: tuple[type[nn.Module], ...]
) -> list[tuple[str, nn.Module]]:
    layers = [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, layer_types)
        and isinstance(getattr(layer, "weight", None), torch.Tensor)
        and layer.weight.ndim >= 2
    ]
    if not layers:
        names = ", ".join(t.__name__ for t in layer_types)
        raise ValidationError(f"the module has no layers of type {names} with a weight matrix to analyse")
    return layers


def _module_lists(module: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [
        (name, item) for name, item in module.named_modules() if isinstance(item, nn.ModuleList) and len(item)
    ]


def _group_units(module: nn.Module, layers: list[tuple[str, nn.Module]]) -> dict[str, list[str]]:
    """Group layers by the innermost `nn.ModuleList` item holding them (else each layer is its own unit)."""
    items = [
        f"{name}.{index}" if name else str(index)
        for name, lst in _module_lists(module)
        for index in range(len(lst))
    ]
    units: dict[str, list[str]] = {}
    for name, _ in layers:
        holders = [item for item in items if name == item or name.startswith(item + ".")]
        units.setdefault(max(holders, key=len) if holders else name, []).append(name)
    return units


def _ranked(results: list[LayerSensitivity]) -> list[LayerSensitivity]:
    return sorted(results, key=lambda item: (-item.score, item.name))


@contextlib.contextmanager
def _replaced_weights(replacements: dict[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """Write new values into parameters in place and put the exact original bits back afterwards."""
    saved = {param: param.detach().clone() for param in replacements}
    try:
        with torch.no_grad():
            for param, value in replacements.items():
                param.copy_(value)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved.items():
                param.copy_(original)


@contextlib.contextmanager
def _measurement(module: nn.Module, inputs: Batches | Mapping[str, torch.Tensor]) -> Iterator:
    """Put `module` in eval mode, record its reference outputs, and yield `measure(metric) -> degradation`."""
    batches = as_batches(inputs)
    wrapped = LoadedModel(
        source=Path("<in-memory>"),
        path=Path("<in-memory>"),
        format=ModelFormat.TORCH_PICKLED_MODULE,
        options=LoadOptions(),
        input_specs=[],
        module=module,
    )
    was_training = module.training
    module.eval()
    try:
        reference = [run_outputs(wrapped, batch) for batch in batches]

        def measure(metric: DegradationMetric) -> float:
            candidate = [run_outputs(wrapped, batch) for batch in batches]
            return degradation(aggregate_agreement(reference, candidate), metric)

        yield measure
    finally:
        module.train(was_training)


def _check_metric(metric: str) -> None:
    if metric not in ("relative_l2", "cosine"):
        raise ValidationError(f"metric must be 'relative_l2' or 'cosine', got {metric!r}")


def degradation(agreements: Sequence[OutputAgreement], metric: DegradationMetric) -> float:
    """Worst output's degradation: its relative L2, or 1 - its cosine."""
    if metric == "relative_l2":
        return max(item.relative_l2 for item in agreements)
    if metric == "cosine":
        return max(1.0 - item.cosine for item in agreements)
    raise ValidationError(f"metric must be 'relative_l2' or 'cosine', got {metric!r}")
