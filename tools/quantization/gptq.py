"""GPTQ (Frantar et al. 2022): 4- or 8-bit group-wise weights chosen to minimize each layer's output error.

For each Linear layer, in the order the model calls them, the calibration inputs reaching it (through the
layers already quantized) give the Hessian H = 2 XᵀX / n of its squared output error. Columns are quantized
one at a time on a fixed min-max grid per group, and each column's rounding error, scaled by the Cholesky
factor of the damped H⁻¹, is pushed onto the columns not yet quantized (lazy batch updates of 128
columns). Round-to-nearest (`quantize_rtn`) uses the same grid without that compensation.

Implementation: our own, in torch only. torchao 0.18's `torchao.prototype.gptq` was tried first: its
convert step asserts a CUDA device ("GPTQ only supports CUDA currently") and its int4 path needs the `mslk`
package, so it cannot run on CPU. Layers become `GroupQuantizedLinear`: packed codes (two 4-bit codes a
byte), float16 scales and uint8 zero points per group. On the CPU, 4-bit layers run torch's int4 kernel
(`_weight_int4pack_mm_for_cpu`, bfloat16 activations); others dequantize on every call. No act-order.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from tools.errors import NotApplicableError, OptimizationError
from tools.log import get_logger
from tools.quantization.torch_cast import byte_facts, quantization_spec, state_bytes_by_dtype, tensor_bytes
from tools.techniques.artifacts import save_module_product
from tools.techniques.base import (
    CalibrationData,
    Needs,
    TechniqueContext,
    TechniqueProduct,
)
from tools.techniques.registry import register
from tools.techniques.selection import ProtectedLayersConfig, select_linear_layers, unmatched_patterns

_log = get_logger("quantization.gptq")
_LAZY_BATCH = 128
_SAMPLE_ROWS = 4096


class GptqConfig(ProtectedLayersConfig):
    """Quantize Linear weights with GPTQ on calibration inputs: group-wise grid, error compensation."""

    type: Literal["gptq"] = "gptq"
    bits: Literal[4, 8] = Field(default=4, description="Bits per code.", json_schema_extra={"search": [4, 8]})
    group_size: int | None = Field(
        default=64,
        ge=8,
        description="Input features sharing one scale and zero point; None: one per output channel.",
        json_schema_extra={"search": [32, 64, 128, None]},
    )
    damp_percent: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="Dampening added to the Hessian diagonal, as a fraction of its mean: larger is more "
        "stable with few calibration samples, smaller follows the data more closely.",
        json_schema_extra={"search": [0.01, 0.05, 0.1]},
    )
    calibration_batches: int = Field(
        default=8, ge=1, le=1024, description="Calibration batches used (the first ones given)."
    )
    symmetric: bool = Field(
        default=False, description="Grid symmetric around zero (no zero point) instead of min-max."
    )
    int4_cpu_kernel: bool = Field(
        default=True,
        description="Run 4-bit layers that fit it with torch's int4 CPU kernel (bfloat16 activations, "
        "faster than float32); False dequantizes to the input dtype on every call (exact, slow).",
    )


class GroupQuantizedLinear(nn.Module):
    """A Linear layer stored as integer codes with a float16 scale and a uint8 zero point per weight group.

    The stored codes are portable. On the CPU, 4-bit layers whose shape fits torch's int4 kernel
    (`_weight_int4pack_mm_for_cpu`: out % 16, in % group, group 32..256) repack them once on the first call
    and multiply in bfloat16; anything else dequantizes to the input dtype on every call.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None,
        int4_cpu_kernel: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        groups = math.ceil(in_features / group_size)
        self.padded = groups * group_size
        stored = math.ceil(self.padded * bits / 8)
        self.register_buffer("codes", torch.zeros(out_features, stored, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.int4_cpu_kernel = int4_cpu_kernel and int4_kernel_fits(
            out_features, in_features, group_size, bits
        )
        self._kernel_weights: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_kernel_weights"] = None  # a CPU-specific layout, rebuilt on the first call after loading
        return state

    def set_quantized(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        """Store (out, in) integer codes and (out, groups) scales and zero points, packing 4-bit codes."""
        padded = torch.zeros(self.out_features, self.codes.shape[1] * 8 // self.bits, dtype=torch.uint8)
        padded[:, : self.in_features] = codes.to(torch.uint8)
        if self.bits == 4:
            padded = padded[:, 0::2] | (padded[:, 1::2] << 4)
        self.codes.copy_(padded)
        self.scales.copy_(scales.to(torch.float16))
        self.zeros.copy_(zeros.to(torch.uint8))
        self._kernel_weights = None

    def integer_codes(self) -> torch.Tensor:
        """The (out, padded in) codes, unpacked."""
        if self.bits == 4:
            unpacked = torch.stack([self.codes & 0xF, self.codes >> 4], dim=-1)
            return unpacked.reshape(self.out_features, -1)[:, : self.padded]
        return self.codes

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight the codes stand for."""
        groups = self.integer_codes().reshape(self.out_features, -1, self.group_size).to(dtype)
        weight = (groups - self.zeros.to(dtype).unsqueeze(-1)) * self.scales.to(dtype).unsqueeze(-1)
        return weight.reshape(self.out_features, -1)[:, : self.in_features]

    def _int4_kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel_weights is None:
            with torch.inference_mode(False):
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    self.integer_codes()[:, : self.in_features].to(torch.int32).contiguous(), 1
                )
                # tinygemm dequantizes (q - 8) * scale + offset, so offset = scale * (8 - zero point)
                scale = self.scales.to(torch.float32)
                offset = scale * (8 - self.zeros.to(torch.float32))
                scale_and_offset = (
                    torch.stack([scale.t(), offset.t()], dim=-1).to(torch.bfloat16).contiguous()
                )
            self._kernel_weights = (packed, scale_and_offset)
        return self._kernel_weights

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(inputs.dtype) if self.bias is not None else None
        if self.int4_cpu_kernel and inputs.device.type == "cpu":
            packed, scale_and_offset = self._int4_kernel_weights()
            flat = inputs.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, scale_and_offset)
            out = out.to(inputs.dtype).reshape(*inputs.shape[:-1], self.out_features)
            return out + bias if bias is not None else out
        return F.linear(inputs, self.dequantized_weight(inputs.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, int4_cpu_kernel={self.int4_cpu_kernel}"
        )


def int4_kernel_fits(out_features: int, in_features: int, group_size: int, bits: int) -> bool:
    """Whether torch's int4 CPU kernel takes this layer shape."""
    return (
        bits == 4
        and group_size in (32, 64, 128, 256)
        and out_features % 16 == 0
        and in_features % group_size == 0
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    )


def _grid(weights: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero point) of a min-max grid over `weights` (rows, columns), scales fp16-exact."""
    max_code = 2**bits - 1
    low = weights.min(dim=1).values.clamp(max=0)
    high = weights.max(dim=1).values.clamp(min=0)
    if symmetric:
        high = torch.maximum(low.abs(), high)
        low = -high
    scale = ((high - low) / max_code).to(torch.float16).to(torch.float32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.full_like(scale, (max_code + 1) / 2) if symmetric else torch.round(-low / scale)
    return scale, zero.clamp(0, max_code)


def _round(column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(column / scale) + zero, 0, 2**bits - 1)


def quantize_rtn(
    weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round each weight to the nearest point of GPTQ's grid: (codes, scales, zeros), GPTQ's baseline."""
    weight = weight.detach().to(torch.float32)
    group = group_size or weight.shape[1]
    codes = torch.zeros_like(weight, dtype=torch.uint8)
    scales, zeros = [], []
    for start in range(0, weight.shape[1], group):
        block = weight[:, start : start + group]
        scale, zero = _grid(block, bits, symmetric)
        codes[:, start : start + group] = _round(block, scale[:, None], zero[:, None], bits).to(torch.uint8)
        scales.append(scale)
        zeros.append(zero)
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int | None
) -> torch.Tensor:
    """The float weight that (codes, scales, zeros) stand for."""
    group = group_size or codes.shape[1]
    expand = lambda values: values.repeat_interleave(group, dim=1)[:, : codes.shape[1]]  # noqa: E731
    return (codes.to(torch.float32) - expand(zeros)) * expand(scales)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None,
    damp_percent: float,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Algorithm 1 of the paper) for one (out, in) weight: (codes, scales, zeros) per group."""
    W = weight.detach().to(torch.float32).clone()
    H = hessian.to(torch.float32).clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp_percent * torch.mean(torch.diag(H)))
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError as exc:
        raise OptimizationError(
            f"gptq: the damped Hessian of a {rows}x{columns} layer is not positive definite ({exc})",
            hint="raise damp_percent (e.g. 0.1) or give more calibration batches",
        ) from None
    with _one_thread():
        return _quantize_columns(W, Hinv, bits, group_size, symmetric)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run GPTQ's column loop on one thread: thousands of tiny ops, where thread hand-offs cost more than
    they save (10x slower wall time on a busy 2-core machine with the default thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _quantize_columns(
    W: torch.Tensor, Hinv: torch.Tensor, bits: int, group_size: int | None, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The column loop of GPTQ with lazy batch updates; `Hinv` is the upper Cholesky factor of H⁻¹."""
    rows, columns = W.shape
    group = group_size or columns
    codes = torch.zeros(rows, columns, dtype=torch.uint8)
    groups = math.ceil(columns / group)
    scales, zeros = torch.zeros(rows, groups), torch.zeros(rows, groups)
    lazy = _LAZY_BATCH if group_size is None else max(group, _LAZY_BATCH // group * group)
    for start in range(0, columns, lazy):
        end = min(start + lazy, columns)
        block, errors, Hinv_block = (
            W[:, start:end].clone(),
            torch.zeros(rows, end - start),
            Hinv[start:end, start:end],
        )
        diagonal = Hinv_block.diagonal().tolist()
        for i in range(end - start):
            column = start + i
            if column % group == 0:  # freeze this group's grid on its error-updated weights
                index = column // group
                source = block[:, i : i + group] if group_size else W
                scales[:, index], zeros[:, index] = _grid(source, bits, symmetric)
            scale, zero = scales[:, column // group], zeros[:, column // group]
            q = _round(block[:, i], scale, zero, bits)
            codes[:, column] = q.to(torch.uint8)
            error = (block[:, i] - scale * (q - zero)) / diagonal[i]
            block[:, i:].addr_(error, Hinv_block[i, i:], alpha=-1.0)
            errors[:, i] = error
        W[:, end:] -= errors @ Hinv[start:end, end:]
    return codes, scales, zeros


def output_error(weight: torch.Tensor, approximation: torch.Tensor, inputs: torch.Tensor) -> float:
    """Relative squared output error ||X ΔWᵀ||² / ||X Wᵀ||² of a layer on input rows X (rows, in)."""
    weight = weight.detach().to(torch.float32)
    reference = float((inputs @ weight.T).square().sum())
    error = float((inputs @ (weight - approximation.to(torch.float32)).T).square().sum())
    return error / reference if reference > 0 else 0.0


class _StopForward(Exception):
    """Raised by a capture hook once the layer's inputs are recorded: the rest of the forward is skipped."""


def _feed(model: nn.Module, batch: dict[str, torch.Tensor], names: list[str]) -> None:
    """Run the model on one calibration batch, inputs passed by name in input-spec order."""
    missing = [name for name in names if name not in batch]
    if missing:
        raise OptimizationError(
            f"gptq: calibration batches lack the model inputs {', '.join(missing)}",
            hint="give one array per model input, named as the model's inputs",
        )
    model(**{name: batch[name] for name in names})


def _call_order(model: nn.Module, layers: dict[str, nn.Linear], batch: dict, names: list[str]) -> list[str]:
    """Names of `layers` in the order one forward pass first calls them (layers never called are left out)."""
    order: list[str] = []
    handles = [
        layer.register_forward_pre_hook(
            lambda _m, _a, name=name: order.append(name) if name not in order else None
        )
        for name, layer in layers.items()
    ]
    try:
        _feed(model, batch, names)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _hessian(
    model: nn.Module, layer: nn.Linear, batches: list[dict], names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """2 XᵀX / n over every input row reaching `layer` (the forward stops there), and up to
    `_SAMPLE_ROWS` of those rows (evenly spaced) to measure output errors on."""
    total = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs = args[0].detach().reshape(-1, layer.in_features).to(torch.float64)
        total.add_(inputs.T @ inputs)
        seen.append(inputs.to(torch.float32))
        raise _StopForward

    handle = layer.register_forward_pre_hook(capture)
    try:
        for batch in batches:
            try:
                _feed(model, batch, names)
            except _StopForward:
                pass
    finally:
        handle.remove()
    rows = torch.cat(seen) if seen else torch.zeros(0, layer.in_features)
    sample = rows[:: max(1, math.ceil(rows.shape[0] / _SAMPLE_ROWS))]
    return (2.0 * total / max(rows.shape[0], 1)).to(torch.float32), sample


def gptq_quantize_model(
    model: nn.Module,
    config: GptqConfig,
    calibration: CalibrationData,
    input_names: list[str],
    ctx: TechniqueContext,
) -> dict[str, Any]:
    """Quantize the selected Linear layers one by one in call order, then swap in GroupQuantizedLinear."""
    eligible, skipped = select_linear_layers(model, config.protected, config.protect_output_layer)
    batches = calibration.batches[: config.calibration_batches]
    layers = dict(eligible)
    order = _call_order(model, layers, batches[0], input_names)
    for name in layers:
        if name not in order:
            skipped[name] = "unused: the calibration inputs never reach it"
    if not order:
        raise NotApplicableError(
            f"gptq: no Linear layer to quantize is reached by the inputs ({len(skipped)} left alone)",
            hint="narrow `protected` or set protect_output_layer=false",
            detail={"skipped": skipped},
        )
    started = time.monotonic()
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    gptq_error = rtn_error = 0.0
    weight_before = 0
    for step, name in enumerate(order):
        if ctx.time_budget_s is not None and time.monotonic() - started > ctx.time_budget_s:
            raise OptimizationError(
                f"gptq: the time budget of {ctx.time_budget_s:.0f} s ran out after {step} of "
                f"{len(order)} layers",
                hint="give fewer calibration batches or a larger time budget",
            )
        layer = layers[name]
        hessian, sample = _hessian(model, layer, batches, input_names)
        weight = layer.weight.detach().to(torch.float32)
        codes, scales, zeros = gptq_quantize(
            weight, hessian, config.bits, config.group_size, config.damp_percent, config.symmetric
        )
        approximation = dequantize(codes, scales, zeros, config.group_size)
        rtn = dequantize(
            *quantize_rtn(weight, config.bits, config.group_size, config.symmetric), config.group_size
        )
        gptq_error += output_error(weight, approximation, sample)
        rtn_error += output_error(weight, rtn, sample)
        weight_before += tensor_bytes(layer.weight)
        layer.weight.data.copy_(approximation.to(layer.weight.dtype))  # later layers see quantized outputs
        quantized[name] = (codes, scales, zeros)
        ctx.progress(25 + 50 * (step + 1) / len(order), f"gptq: quantized {name} ({step + 1}/{len(order)})")
    modules = dict(model.named_modules())
    weight_after = 0
    for name, (codes, scales, zeros) in quantized.items():
        layer = layers[name]
        group = config.group_size or layer.in_features
        replacement = GroupQuantizedLinear(
            layer.in_features, layer.out_features, config.bits, group, layer.bias, config.int4_cpu_kernel
        )
        replacement.set_quantized(codes, scales, zeros)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, replacement)
        weight_after += sum(tensor_bytes(getattr(replacement, key)) for key in ("codes", "scales", "zeros"))
    return {
        "layers_quantized": len(quantized),
        "skipped": skipped,
        "calibration_batches_used": len(batches),
        "mean_layer_output_error_gptq": gptq_error / len(quantized),
        "mean_layer_output_error_rtn": rtn_error / len(quantized),
        "quantized_weight_bytes_before": weight_before,
        "quantized_weight_bytes_after": weight_after,
        "quantized_weight_compression": weight_before / weight_after,
        "implementation": "robopt (torch); torchao.prototype.gptq needs CUDA",
    }


@register(
    GptqConfig,
    quantization_spec(
        name="gptq",
        summary="GPTQ 4/8-bit group-wise Linear weights with Hessian-based error compensation (calibrated).",
        needs=Needs(calibration_data=True),
        precision="int4",
        expected_effect="4-bit group-64 Linear weights 7.3x smaller (codes packed two a byte, fp16 scales); "
        "on held-out reaching inputs the VLA's action error vs float32 is 0.017 relative L2 against 0.029 "
        "for round-to-nearest on the same grid. CPU batch-1 latency measured on the reference VLA (1 "
        "thread, in process, median of interleaved runs, AVX512-BF16 CPU): 0.67-0.9x of float32 with "
        "torch's int4 kernel; 8-bit layers and shapes the kernel does not take (in % group, out % 16) "
        "dequantize every call: the conv policy, whose widest layer has 1026 inputs, ran 4.7x slower.",
    ),
)
def _apply_gptq(ctx: TechniqueContext, config: GptqConfig) -> TechniqueProduct:
    model = ctx.require_module("gptq")
    calibration = ctx.require_calibration("gptq")
    ctx.progress(25, "gptq: finding the order the model calls its Linear layers")
    before = state_bytes_by_dtype(model)
    input_names = [spec.name for spec in ctx.source.input_specs]
    with torch.no_grad():
        facts = gptq_quantize_model(model, config, calibration, input_names, ctx)
    facts.update(byte_facts(before, state_bytes_by_dtype(model)))
    facts["unmatched_patterns"] = unmatched_patterns(model, config.protected)
    ctx.progress(75, "gptq: saving the quantized module")
    product = save_module_product(ctx, model, facts)
    _log.info(
        "gptq quantized",
        extra={"job_id": ctx.job_id, "technique": "gptq", "layers": facts["layers_quantized"]},
    )
    return product
