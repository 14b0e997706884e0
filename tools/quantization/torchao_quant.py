"""torchao weight quantization of Linear layers: int8 weight-only, int8 dynamic activations, int1..8 weights.

Each config maps to one `torchao.quantization` config applied with `quantize_` to the selected Linear layers
(protected names, the output layer and tied weights are left alone). Weights become torchao tensor subclasses
(`Int8Tensor`, `IntxUnpackedToInt8Tensor`) and the module is saved whole; loading it needs torchao installed.
Measured here (reference VLA, CPU, 1 thread, batch 1): none of these runs faster than float32 on this CPU,
see each `expected_effect`; their gain is stored size, and speed on backends with int8 kernels.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tools.errors import NotApplicableError, OptimizationError
from tools.log import get_logger
from tools.quantization.torch_cast import byte_facts, quantization_spec, state_bytes_by_dtype, tensor_bytes
from tools.techniques.artifacts import save_module_product
from tools.techniques.base import (
    Needs,
    TechniqueContext,
    TechniqueProduct,
)
from tools.techniques.registry import register
from tools.techniques.selection import ProtectedLayersConfig, select_linear_layers, unmatched_patterns

_log = get_logger("quantization.torchao")
_NEEDS = Needs(packages=("torchao",), install_hint="pip install 'torchao>=0.14'")


class TorchaoLinearConfig(ProtectedLayersConfig):
    """Which Linear layers a torchao technique quantizes."""


class TorchaoInt8WeightOnlyConfig(TorchaoLinearConfig):
    """Store Linear weights as int8 with float scales; activations stay float (Int8WeightOnlyConfig)."""

    type: Literal["torchao_int8_weight_only"] = "torchao_int8_weight_only"
    group_size: int | None = Field(
        default=None,
        ge=16,
        description="Input features sharing one scale; None: one scale per output channel. Layers whose "
        "input width is not a multiple are left in float32.",
        json_schema_extra={"search": [None, 128, 64]},
    )


class TorchaoInt8DynamicConfig(TorchaoLinearConfig):
    """Int8 weights and int8 activations quantized per token at run time (Int8DynamicActivationInt8Weight)."""

    type: Literal["torchao_int8_dynamic"] = "torchao_int8_dynamic"
    activation_mapping: Literal["symmetric", "asymmetric"] = Field(
        default="symmetric",
        description="Activation quantization grid: symmetric around zero, or asymmetric with a zero point.",
        json_schema_extra={"search": ["symmetric", "asymmetric"]},
    )


class TorchaoIntxWeightOnlyConfig(TorchaoLinearConfig):
    """Quantize Linear weights to `bits` (1..8) per group with float scales (torchao IntxWeightOnlyConfig).

    torchao stores the codes unpacked, one int8 per weight, so fewer bits cost accuracy without shrinking
    the file below int8 size.
    """

    type: Literal["torchao_intx_weight_only"] = "torchao_intx_weight_only"
    bits: int = Field(
        default=4, ge=1, le=8, description="Bits per weight code.", json_schema_extra={"search": [8, 6, 4, 3]}
    )
    group_size: int | None = Field(
        default=32,
        ge=1,
        description="Input features sharing one scale; None: one scale per output channel. Layers whose "
        "input width is not a multiple are left in float32.",
        json_schema_extra={"search": [32, 64, 128, None]},
    )
    mapping: Literal["symmetric", "asymmetric"] = Field(
        default="symmetric",
        description="Weight grid: symmetric around zero, or asymmetric with a per-group zero point.",
        json_schema_extra={"search": ["symmetric", "asymmetric"]},
    )


def _mapping(name: str) -> Any:
    from torchao.quantization import MappingType

    return MappingType.SYMMETRIC if name == "symmetric" else MappingType.ASYMMETRIC


def _granularity(group_size: int | None, per_channel: Any) -> Any:
    from torchao.quantization import PerGroup

    return per_channel if group_size is None else PerGroup(group_size)


def torchao_config(config: TorchaoLinearConfig) -> Any:
    """The torchao quantization config that a robopt torchao config stands for."""
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerAxis,
        PerRow,
    )

    if isinstance(config, TorchaoInt8WeightOnlyConfig):
        granularity = _granularity(config.group_size, PerRow())
        return Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    if isinstance(config, TorchaoInt8DynamicConfig):
        return Int8DynamicActivationInt8WeightConfig(
            act_mapping_type=_mapping(config.activation_mapping), set_inductor_config=False
        )
    if isinstance(config, TorchaoIntxWeightOnlyConfig):
        return IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{config.bits}"),
            granularity=_granularity(config.group_size, PerAxis(0)),
            mapping_type=_mapping(config.mapping),
        )
    raise OptimizationError(f"{type(config).__name__} is not a torchao technique config")


def drop_bound_extra_repr(model: nn.Module) -> None:
    """Remove the `extra_repr` methods torchao binds onto quantized modules: they cannot be pickled."""
    for module in model.modules():
        module.__dict__.pop("extra_repr", None)


def quantize_linear_layers(model: nn.Module, config: TorchaoLinearConfig) -> dict[str, Any]:
    """Quantize the selected Linear layers of `model` in place with torchao; return the facts."""
    from torchao.quantization import quantize_

    eligible, skipped = select_linear_layers(model, config.protected, config.protect_output_layer)
    group_size = getattr(config, "group_size", None)
    if group_size is not None:
        for name, linear in list(eligible):
            if linear.in_features % group_size:
                skipped[name] = (
                    f"shape: {linear.in_features} input features are not a multiple of {group_size}"
                )
                eligible.remove((name, linear))
    if not eligible:
        raise NotApplicableError(
            f"{config.type}: the model has no Linear layer left to quantize ({len(skipped)} left alone)",
            hint="narrow `protected`, set protect_output_layer=false, or pick a group size that divides "
            "the layers' input widths",
            detail={"skipped": skipped},
        )
    weight_before = sum(tensor_bytes(linear.weight) for _, linear in eligible)
    names = {name for name, _ in eligible}
    quantize_(model, torchao_config(config), filter_fn=lambda _module, fqn: fqn in names)
    drop_bound_extra_repr(model)
    modules = dict(model.named_modules())
    weight_after = sum(tensor_bytes(modules[name].weight) for name in names)
    return {
        "layers_quantized": len(eligible),
        "skipped": skipped,
        "quantized_weight_bytes_before": weight_before,
        "quantized_weight_bytes_after": weight_after,
        "quantized_weight_compression": weight_before / weight_after,
        "unmatched_patterns": unmatched_patterns(model, config.protected),
    }


def _apply_torchao(ctx: TechniqueContext, config: TorchaoLinearConfig) -> TechniqueProduct:
    model = ctx.require_module(config.type)
    ctx.progress(25, f"{config.type}: selecting Linear layers")
    before = state_bytes_by_dtype(model)
    ctx.progress(50, f"{config.type}: quantizing with torchao")
    with torch.no_grad():
        facts = quantize_linear_layers(model, config)
    facts.update(byte_facts(before, state_bytes_by_dtype(model)))
    ctx.progress(75, f"{config.type}: saving the quantized module")
    product = save_module_product(ctx, model, facts)
    _log.info(
        "quantized linear layers",
        extra={"job_id": ctx.job_id, "technique": config.type, "layers": facts["layers_quantized"]},
    )
    return product


@register(
    TorchaoInt8WeightOnlyConfig,
    quantization_spec(
        "torchao_int8_weight_only",
        "torchao int8 weight-only quantization of Linear layers (per-channel or per-group scales).",
        "int8",
        "Quantized Linear weights about 4x smaller (whole VLA state 3.7x); fidelity cosine > 0.9999 on the "
        "reaching task. CPU batch-1 latency measured on the reference VLA (1 thread, in process, median of "
        "interleaved runs): 1.1-1.6x slower than float32, conv policy 1.0x (eager dequantize + matmul); "
        "faster only "
        "where torch.compile or a GPU int8 kernel is used.",
        _NEEDS,
    ),
)
def _apply_int8_weight_only(ctx: TechniqueContext, config: TorchaoInt8WeightOnlyConfig) -> TechniqueProduct:
    return _apply_torchao(ctx, config)


@register(
    TorchaoInt8DynamicConfig,
    quantization_spec(
        "torchao_int8_dynamic",
        "torchao int8 weights with int8 activations quantized per token at run time.",
        "int8",
        "Quantized Linear weights about 4x smaller; fidelity cosine > 0.999 on the reaching task. CPU "
        "batch-1 latency measured on the reference VLA (1 thread, in process, median of interleaved runs): "
        "3-3.9x slower than float32 (conv policy 4.9x); quantizing activations per call costs more than "
        "the int8 matmul saves.",
        _NEEDS,
    ),
)
def _apply_int8_dynamic(ctx: TechniqueContext, config: TorchaoInt8DynamicConfig) -> TechniqueProduct:
    product = _apply_torchao(ctx, config)
    exact = int8_gemm_is_exact()
    product.facts["int8_gemm_exact"] = exact
    if not exact:  # the evaluation measures what this costs; the fact says why
        product.facts["int8_gemm_note"] = (
            "this CPU's int8 matmul (torch._int_mm through oneDNN without VNNI, e.g. AVX2) saturates its int16 "
            "partial sums: int8 x int8 activations lose accuracy here that exact int8 arithmetic would keep"
        )
    return product


def int8_gemm_is_exact() -> bool:
    """Whether this process's int8 matmul (`torch._int_mm`) computes full-range int8 products exactly.

    On CPUs without VNNI (AVX2), oneDNN sums pairs of u8 x s8 products in int16 and saturates, so int8 x int8
    results differ from the exact int32 ones; with AVX-512 VNNI they match. A 32x256 @ 256x64 probe, ~1 ms.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (256, 64), dtype=torch.int8, generator=generator)
    try:
        got = torch._int_mm(a, b)
    except RuntimeError:
        return False
    return torch.equal(got.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64))


@register(
    TorchaoIntxWeightOnlyConfig,
    quantization_spec(
        "torchao_intx_weight_only",
        "torchao 1..8-bit weight-only quantization of Linear layers with group-wise scales.",
        "int4",
        "Codes are stored one byte each, so the file is no smaller than int8 (about 3.3x below float32 at "
        "group 32, scales included); 4-bit fidelity cosine > 0.998 on the reaching task. CPU batch-1 "
        "latency measured on the reference VLA (1 thread, in process, median of interleaved runs): "
        "2.2-5.6x slower than float32, conv policy 1.5x (eager dequantize on every call).",
        _NEEDS,
    ),
)
def _apply_intx_weight_only(ctx: TechniqueContext, config: TorchaoIntxWeightOnlyConfig) -> TechniqueProduct:
    return _apply_torchao(ctx, config)
