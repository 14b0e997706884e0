"""Cast a PyTorch model's weights to float16 or bfloat16, keeping named modules (norms, heads) in float32.

Mixed precision needs dtype boundaries, or a float32 input meets a float16 weight and the forward fails.
Every module that owns floating parameters gets a forward pre-hook casting its floating inputs to its own
parameter dtype, and the root a hook returning float32 outputs. The hooks are module-level functions, so
they pickle with the model (`torch_pickled_module`): the artifact keeps the original interface, float32 in
and float32 out, and module names stay as they were. Also home of the byte-counting helpers the other torch
quantization techniques share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from tools.errors import OptimizationError
from tools.intake.types import ModelFormat
from tools.log import get_logger
from tools.techniques.artifacts import TORCH_INPUTS, save_module_product
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register
from tools.techniques.selection import check_patterns, is_protected, unmatched_patterns

_log = get_logger("quantization.torch_cast")

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _tensor_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that store `tensor`: itself, or the inner tensors of a quantized tensor subclass."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return [part for name in names for part in _tensor_parts(getattr(tensor, name))]
    return [tensor]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes that store `tensor`, summed over the inner tensors of a quantized tensor subclass."""
    return sum(part.numel() * part.element_size() for part in _tensor_parts(tensor))


def state_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's stored state (parameters, buffers, quantization scales) by storage dtype.

    Quantized tensor subclasses (torchao) count as the tensors they hold; a tensor shared by several
    names counts once.
    """
    totals: dict[str, int] = {}
    seen: set[tuple[int, int, str]] = set()
    for value in model.state_dict(keep_vars=True).values():
        if not isinstance(value, torch.Tensor):
            continue
        for part in _tensor_parts(value):
            key = (part.data_ptr(), part.numel(), str(part.dtype))
            if part.numel() and key in seen:
                continue
            seen.add(key)
            dtype = str(part.dtype).removeprefix("torch.")
            totals[dtype] = totals.get(dtype, 0) + part.numel() * part.element_size()
    return dict(sorted(totals.items()))


def byte_facts(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Facts comparing stored bytes before and after a transform."""
    total_before, total_after = sum(before.values()), sum(after.values())
    return {
        "state_bytes_before": before,
        "state_bytes_after": after,
        "state_bytes_total_before": total_before,
        "state_bytes_total_after": total_after,
        "state_compression": total_before / total_after if total_after else None,
    }


class _CastConfigBase(TechniqueConfig):
    """Fields shared by the float16 and bfloat16 casts."""

    keep_float32: tuple[str, ...] = Field(
        default=(),
        description="Glob patterns (fnmatch) of qualified module names kept in float32 with everything "
        "inside them, e.g. 'action_head' for the action head, '*lm_head*' for the logits layer.",
        json_schema_extra={"search": [[], ["action_head"], ["*lm_head*"]]},
    )
    keep_norm_layers: bool = Field(
        default=True,
        description="Keep normalization layers (batch, layer, group and RMS norms, found by type) in "
        "float32: their statistics and reductions are what half precision loses first.",
    )

    @field_validator("keep_float32")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_patterns(value)


class TorchFp16CastConfig(_CastConfigBase):
    """Store and run weights in float16 (IEEE half), except the modules kept in float32."""

    type: Literal["torch_fp16_cast"] = "torch_fp16_cast"


class TorchBf16CastConfig(_CastConfigBase):
    """Store and run weights in bfloat16 (float32's range, 8-bit mantissa), except modules kept in float32."""

    type: Literal["torch_bf16_cast"] = "torch_bf16_cast"


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """Cast the floating tensors in (nested tuples, lists and dicts of) `value` to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        items = [_cast_floats(item, dtype) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_cast_floats(item, dtype) for item in value]
    if isinstance(value, dict) and type(value) is dict:
        return {key: _cast_floats(item, dtype) for key, item in value.items()}
    return value


def match_parameter_dtype(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook: cast floating inputs to the dtype of the module's own floating parameters."""
    for parameter in module.parameters(recurse=False):
        if parameter.is_floating_point():
            return _cast_floats(args, parameter.dtype), _cast_floats(kwargs, parameter.dtype)
    return args, kwargs


def outputs_to_float32(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook on the root: return floating outputs as float32, the interface of the original."""
    if isinstance(output, Mapping) and type(output) is not dict:  # transformers' ModelOutput
        for key in list(output.keys()):
            output[key] = _cast_floats(output[key], torch.float32)
        return output
    return _cast_floats(output, torch.float32)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether `module` is a normalization layer: torch's norms, or a class named like one (LlamaRMSNorm)."""
    return isinstance(module, _NORM_LAYERS) or type(module).__name__.endswith(("Norm", "LayerNorm"))


def cast_module(
    model: nn.Module, dtype: torch.dtype, keep_float32: tuple[str, ...], keep_norm_layers: bool
) -> dict[str, Any]:
    """Cast floating parameters and buffers to `dtype` outside the kept modules and add the dtype hooks.

    A parameter shared by a kept and a cast module stays float32. Returns what was kept and cast.
    """
    owners: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    kept_modules: list[str] = []
    for name, module in model.named_modules():
        kept = is_protected(name, keep_float32) or (keep_norm_layers and is_norm_layer(module))
        if kept and name and any(True for _ in module.parameters(recurse=False)):
            kept_modules.append(name)
        for parameter_name, parameter in module.named_parameters(recurse=False):
            owners.setdefault(id(parameter), []).append((module, parameter_name, kept))
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module._buffers[buffer_name] = buffer.to(torch.float32 if kept else dtype)
    cast_count = kept_count = 0
    for places in owners.values():
        module, parameter_name, _ = places[0]
        parameter = getattr(module, parameter_name)
        if not parameter.is_floating_point() or is_traceable_wrapper_subclass(parameter):
            continue
        target = torch.float32 if any(kept for _, _, kept in places) else dtype
        parameter.data = parameter.data.to(target)
        if target == dtype:
            cast_count += parameter.numel()
        else:
            kept_count += parameter.numel()
    if cast_count == 0:
        raise OptimizationError(
            f"no floating parameter is left to cast to {dtype}: every one is kept in float32 or quantized",
            hint="narrow keep_float32, or cast before quantizing",
        )
    for module in model.modules():
        if any(p.is_floating_point() for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(match_parameter_dtype, with_kwargs=True)
    model.register_forward_hook(outputs_to_float32)
    return {
        "params_cast": cast_count,
        "params_kept_float32": kept_count,
        "modules_kept_float32_count": len(kept_modules),
        "modules_kept_float32": kept_modules[:50],
    }


def _apply_cast(ctx: TechniqueContext, config: _CastConfigBase, dtype: torch.dtype) -> TechniqueProduct:
    name = config.type
    model = ctx.require_module(name)
    ctx.progress(25, f"{name}: counting parameter bytes")
    before = state_bytes_by_dtype(model)
    unmatched = unmatched_patterns(model, config.keep_float32)
    ctx.progress(50, f"{name}: casting to {str(dtype).removeprefix('torch.')}")
    with torch.no_grad():
        cast = cast_module(model, dtype, config.keep_float32, config.keep_norm_layers)
    facts = {**byte_facts(before, state_bytes_by_dtype(model)), **cast, "unmatched_patterns": unmatched}
    ctx.progress(75, f"{name}: saving the cast module")
    product = save_module_product(ctx, model, facts)
    _log.info(
        "cast module",
        extra={"job_id": ctx.job_id, "technique": name, "state_compression": facts["state_compression"]},
    )
    return product


def quantization_spec(
    name: str, summary: str, precision: Any, expected_effect: str, needs: Needs = Needs()
) -> TechniqueSpec:
    """Registry metadata of a technique that quantizes an eager PyTorch module and stores it whole."""
    return TechniqueSpec(
        name=name,
        family=Family.QUANTIZATION,
        summary=summary,
        needs=needs,
        input_formats=TORCH_INPUTS,
        output_format=ModelFormat.TORCH_PICKLED_MODULE.value,
        runtimes=("torch-cpu", "torch-cuda"),
        precision=precision,
        expected_effect=expected_effect,
    )


_CAST_EFFECT = (
    "Stored weights halve (about 2x smaller state for float32 models; modules kept in float32 stay full "
    "size); output fidelity to float32 on the reaching task: cosine > 0.9999. {latency}"
)


@register(
    TorchFp16CastConfig,
    quantization_spec(
        name="torch_fp16_cast",
        summary="Cast PyTorch weights to float16, keeping modules matching keep_float32 in float32.",
        precision="fp16",
        expected_effect=_CAST_EFFECT.format(
            latency="CPU batch-1 latency measured on the reference VLA (1 thread, in process, median of "
            "interleaved runs): 1.7-2.3x slower than float32, conv policy 16x (no fast float16 matmul or "
            "convolution on this CPU); a speed-up needs a GPU."
        ),
    ),
)
def _apply_fp16_cast(ctx: TechniqueContext, config: TorchFp16CastConfig) -> TechniqueProduct:
    return _apply_cast(ctx, config, torch.float16)


@register(
    TorchBf16CastConfig,
    quantization_spec(
        name="torch_bf16_cast",
        summary="Cast PyTorch weights to bfloat16, keeping modules matching keep_float32 in float32.",
        precision="bf16",
        expected_effect=_CAST_EFFECT.replace("0.9999", "0.999").format(
            latency="CPU batch-1 latency measured on the reference VLA (1 thread, in process, median of "
            "interleaved runs): 1.3-1.6x slower than float32 (conv policy 1.3x) even with AVX512-BF16 "
            "(casts at every "
            "dtype boundary outweigh the matmuls at this size); a speed-up needs a GPU or large layers."
        ),
    ),
)
def _apply_bf16_cast(ctx: TechniqueContext, config: TorchBf16CastConfig) -> TechniqueProduct:
    return _apply_cast(ctx, config, torch.bfloat16)
