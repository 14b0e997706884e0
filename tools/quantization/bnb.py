"""bitsandbytes quantization: LLM.int8() (int8 weights, outlier features in float16) and 4-bit NF4/FP4.

Hugging Face directories are reloaded by transformers with a `BitsAndBytesConfig` and written back with
`save_pretrained` (an `hf_directory` that transformers reloads quantized; this path needs `accelerate`).
Any other eager module gets its selected `nn.Linear` layers replaced by `bnb.nn.Linear8bitLt` /
`bnb.nn.Linear4bit` and is saved whole. bitsandbytes 0.50 runs both on CPU here (quantize, forward, save,
reload); `check()` tries a tiny layer once and reports the reason where a build has no CPU kernel.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tools.errors import MissingDependencyError, NotApplicableError, OptimizationError, first_line
from tools.intake.types import LoadOptions, ModelFormat
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

_log = get_logger("quantization.bnb")
_NEEDS = Needs(
    packages=("bitsandbytes",),
    install_hint="pip install 'bitsandbytes>=0.48' (and 'accelerate>=1.1' for Hugging Face directories)",
)
_BLOCKSIZE_4BIT = 64
_TILE_ROWS_4BIT = 32
_COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files of a Hugging Face directory besides the weights and config that a quantized copy keeps.
_HF_SIDE_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*processor*config.json",
    "chat_template*",
)


class BnbLinearConfig(ProtectedLayersConfig):
    """Which Linear layers bitsandbytes quantizes."""


class BnbInt8Config(BnbLinearConfig):
    """LLM.int8(): int8 row-wise weights; activation columns above `threshold` multiply in float16."""

    type: Literal["bnb_int8"] = "bnb_int8"
    threshold: float = Field(
        default=6.0,
        ge=0.0,
        description="Outlier threshold of LLM.int8(): activation features with a magnitude above it are "
        "multiplied in float16; 0 quantizes every feature to int8.",
        json_schema_extra={"search": [0.0, 6.0]},
    )


class Bnb4BitConfig(BnbLinearConfig):
    """4-bit NF4 or FP4 weights in blocks of 64 with absmax scales, dequantized to `compute_dtype`."""

    type: Literal["bnb_4bit"] = "bnb_4bit"
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4",
        description="4-bit code: NF4 (normal-float levels, best for normally distributed weights) or FP4.",
        json_schema_extra={"search": ["nf4", "fp4"]},
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Dtype the weights are dequantized to for the matmul.",
        json_schema_extra={"search": ["float32", "bfloat16"]},
    )
    double_quant: bool = Field(
        default=True,
        description="Quantize the absmax scales themselves (8-bit), saving about 0.4 bits per weight.",
    )


@lru_cache(maxsize=1)
def cpu_backend_reason() -> str | None:
    """Quantize and run a tiny int8 and 4-bit layer on the CPU once; say why not, or None when both work."""
    if torch.cuda.is_available():
        return None
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # noqa: BLE001 - a broken native library raises anything at import
        return f"bitsandbytes does not import: {first_line(exc)}"
    probe = torch.nn.Linear(64, 8)
    inputs = torch.ones(2, 64)
    for kind in ("int8", "4-bit"):
        try:
            layer = _bnb_linear(probe, Bnb4BitConfig() if kind == "4-bit" else BnbInt8Config())
            with torch.inference_mode():
                layer(inputs)
        except Exception as exc:  # noqa: BLE001 - missing kernels raise NotImplementedError/RuntimeError
            return f"bitsandbytes {bnb.__version__} {kind} on CPU: {first_line(exc)}"
    return None


def _bnb_linear(linear: nn.Linear, config: BnbLinearConfig) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights, quantized on the CPU."""
    import bitsandbytes as bnb

    weight = linear.weight.detach().to(torch.float32).clone()
    has_bias = linear.bias is not None
    if isinstance(config, BnbInt8Config):
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=config.threshold,
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif isinstance(config, Bnb4BitConfig):
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=_COMPUTE_DTYPES[config.compute_dtype],
            compress_statistics=config.double_quant,
            quant_type=config.quant_type,
        )
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, compress_statistics=config.double_quant, quant_type=config.quant_type
        )
    else:
        raise OptimizationError(f"{type(config).__name__} is not a bitsandbytes config")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().to(torch.float32).clone(), requires_grad=False)
    return layer.to("cpu")  # bitsandbytes quantizes when its parameters move to a device


def select_layers(
    model: nn.Module, config: BnbLinearConfig
) -> tuple[list[tuple[str, nn.Linear]], dict[str, str]]:
    """The Linear layers to quantize and {name: why not} for the rest.

    bitsandbytes' CPU 4-bit kernel (taken on CPUs with AVX512-BF16) repacks weights in 32-row tiles of
    64-weight blocks, so 4-bit layers need in_features % 64 == 0 and out_features % 32 == 0.
    """
    eligible, skipped = select_linear_layers(model, config.protected, config.protect_output_layer)
    if isinstance(config, Bnb4BitConfig):
        for name, linear in list(eligible):
            if linear.in_features % _BLOCKSIZE_4BIT or linear.out_features % _TILE_ROWS_4BIT:
                skipped[name] = (
                    f"shape: {linear.out_features}x{linear.in_features} does not tile into bitsandbytes' "
                    f"4-bit blocks (in % {_BLOCKSIZE_4BIT}, out % {_TILE_ROWS_4BIT})"
                )
                eligible.remove((name, linear))
    if not eligible:
        raise NotApplicableError(
            f"{config.type}: the model has no Linear layer left to quantize ({len(skipped)} left alone)",
            hint="narrow `protected` or set protect_output_layer=false",
            detail={"skipped": skipped},
        )
    return eligible, skipped


def replace_linear_layers(model: nn.Module, config: BnbLinearConfig) -> dict[str, Any]:
    """Swap the selected `nn.Linear` layers of an eager module for bitsandbytes layers; return the facts."""
    eligible, skipped = select_layers(model, config)
    weight_before = weight_after = 0
    modules = dict(model.named_modules())
    for name, linear in eligible:
        parent_name, _, child = name.rpartition(".")
        layer = _bnb_linear(linear, config)
        setattr(modules[parent_name], child, layer)
        weight_before += tensor_bytes(linear.weight)
        weight_after += _quantized_weight_bytes(layer)
    return {
        "layers_quantized": len(eligible),
        "skipped": skipped,
        "quantized_weight_bytes_before": weight_before,
        "quantized_weight_bytes_after": weight_after,
        "quantized_weight_compression": weight_before / weight_after,
    }


def _quantized_weight_bytes(layer: nn.Module) -> int:
    """Bytes of a bitsandbytes layer's weight with its scales (its state dict less the bias)."""
    return sum(
        tensor_bytes(value)
        for key, value in layer.state_dict().items()
        if key != "bias" and isinstance(value, torch.Tensor)
    )


def _apply_bnb(ctx: TechniqueContext, config: BnbLinearConfig) -> TechniqueProduct:
    model = ctx.require_module(config.type)
    ctx.progress(25, f"{config.type}: selecting Linear layers")
    before = state_bytes_by_dtype(model)
    unmatched = unmatched_patterns(model, config.protected)
    if ctx.source.format == ModelFormat.HF_DIRECTORY:
        product = _quantize_hf_directory(ctx, config, model)
    else:
        ctx.progress(50, f"{config.type}: replacing Linear layers with bitsandbytes layers")
        with torch.no_grad():
            facts = replace_linear_layers(model, config)
        facts.update(byte_facts(before, state_bytes_by_dtype(model)))
        ctx.progress(75, f"{config.type}: saving the quantized module")
        product = save_module_product(ctx, model, facts)
    product.facts["unmatched_patterns"] = unmatched
    _log.info(
        "quantized with bitsandbytes",
        extra={"job_id": ctx.job_id, "technique": config.type, "format": product.format},
    )
    return product


def _bits_and_bytes_config(config: BnbLinearConfig, skip: list[str]) -> Any:
    from transformers import BitsAndBytesConfig

    skip_modules = [re.escape(name) for name in skip]
    if isinstance(config, BnbInt8Config):
        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_skip_modules=skip_modules
        )
    if not isinstance(config, Bnb4BitConfig):
        raise OptimizationError(f"{type(config).__name__} is not a bitsandbytes config")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_compute_dtype=_COMPUTE_DTYPES[config.compute_dtype],
        bnb_4bit_use_double_quant=config.double_quant,
        llm_int8_skip_modules=skip_modules,
    )


def _quantize_hf_directory(
    ctx: TechniqueContext, config: BnbLinearConfig, source: nn.Module
) -> TechniqueProduct:
    """Reload the directory through transformers with a BitsAndBytesConfig and `save_pretrained` it."""
    if importlib.util.find_spec("accelerate") is None:
        raise MissingDependencyError(
            f"{config.type} on a Hugging Face directory needs accelerate (transformers' bitsandbytes loader)",
            hint="pip install 'accelerate>=1.1.0'",
        )
    eligible, skipped = select_layers(source, config)
    weight_before = sum(tensor_bytes(linear.weight) for _, linear in eligible)
    before = state_bytes_by_dtype(source)
    ctx.progress(50, f"{config.type}: reloading the directory with a BitsAndBytesConfig")
    model = type(source).from_pretrained(
        str(ctx.source.path),
        quantization_config=_bits_and_bytes_config(config, sorted(skipped)),
        local_files_only=True,
        trust_remote_code=ctx.source.options.trust_remote_code,
    )
    modules = dict(model.named_modules())
    weight_after = sum(_quantized_weight_bytes(modules[name]) for name, _ in eligible)
    ctx.progress(75, f"{config.type}: writing the quantized directory")
    target = ctx.work_dir / "model"
    model.save_pretrained(str(target))
    for pattern in _HF_SIDE_FILES:
        for path in Path(ctx.source.path).glob(pattern):
            if path.is_file() and not (target / path.name).exists():
                shutil.copy2(path, target / path.name)
    facts = {
        "layers_quantized": sum(1 for m in modules.values() if type(m).__module__.startswith("bitsandbytes")),
        "skipped": skipped,
        "quantized_weight_bytes_before": weight_before,
        "quantized_weight_bytes_after": weight_after,
        "quantized_weight_compression": weight_before / weight_after,
        **byte_facts(before, state_bytes_by_dtype(model)),
    }
    options = LoadOptions(
        trust_remote_code=ctx.source.options.trust_remote_code, input_specs=tuple(ctx.source.input_specs)
    )
    return TechniqueProduct(target, ModelFormat.HF_DIRECTORY.value, options, facts)


@register(
    BnbInt8Config,
    quantization_spec(
        "bnb_int8",
        "bitsandbytes LLM.int8() Linear layers (a Hugging Face directory stays a Hugging Face directory).",
        "int8",
        "Quantized Linear weights about 4x smaller; fidelity cosine > 0.999 on the reaching task. CPU "
        "batch-1 latency measured on the reference VLA (1 thread, in process, median of interleaved runs): "
        "2.5-4.4x slower than float32, conv policy 4.1x (the CPU path casts to float16 and dequantizes "
        "per call); a speed-up "
        "needs a CUDA GPU.",
        _NEEDS,
    ),
    check=cpu_backend_reason,
)
def _apply_bnb_int8(ctx: TechniqueContext, config: BnbInt8Config) -> TechniqueProduct:
    return _apply_bnb(ctx, config)


@register(
    Bnb4BitConfig,
    quantization_spec(
        "bnb_4bit",
        "bitsandbytes 4-bit NF4/FP4 Linear layers (a Hugging Face directory stays a Hugging Face directory).",
        "nf4",
        "Quantized Linear weights about 7.7x smaller (4 bits plus block scales); NF4 fidelity cosine > "
        "0.999 on the reaching task. CPU batch-1 latency measured on the reference VLA (1 thread, in "
        "process, median of interleaved runs, AVX512-BF16 CPU): 0.84-1.35x of float32 (conv policy 1.0x), "
        "from bitsandbytes' bf16 CPU kernel; a clear speed-up needs a CUDA GPU.",
        _NEEDS,
    ),
    check=cpu_backend_reason,
)
def _apply_bnb_4bit(ctx: TechniqueContext, config: Bnb4BitConfig) -> TechniqueProduct:
    return _apply_bnb(ctx, config)
