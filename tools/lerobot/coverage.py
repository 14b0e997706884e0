"""Precision variants of exported policies, each measured: file size, p50 latency (ORT CPU), action error.

- `onnx_policy_variant`: a single-forward policy graph (ACT) as static INT8 QDQ (weights and activations,
  Conv backbone included, ranges calibrated on observations; symmetric int8 as TensorRT takes it), dynamic
  INT8 (MatMul/Gemm only: the Conv backbone stays float) or FP16 (float32 inputs and outputs kept).
- `diffusion_fp16_variant`: the encoder and denoiser of an exported Diffusion Policy in FP16 with float32
  inputs and outputs; the runner keeps the scheduler math in float32, so no dtype ever mixes in the loop.

Every variant's parity is measured against the torch policy on held-out observations (never the calibration
ones) and stored with it as parity.json. Latency is timed in this process (1 thread, warm-up, p50).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from pydantic import BaseModel, Field
from torch import nn

from tools.compression.onnx_sessions import cpu_session
from tools.errors import ValidationError
from tools.inputs import InputSpec
from tools.lerobot.export import POLICY_ONNX, onnx_parity, run_onnx, torch_reference
from tools.lerobot.parity import ParityReport
from tools.lerobot.sampler import DENOISER_ONNX, ENCODER_ONNX, SAMPLER_FILE, DiffusionOnnxRunner
from tools.log import get_logger
from tools.quantization.casting import OnnxFp16Config, convert_to_fp16
from tools.quantization.ort_int8 import (
    CalibrationFeeds,
    OrtInt8StaticConfig,
    gemm_to_matmul,
    preprocess_for_quantization,
    quantize_static_qdq,
    quiet_ort_quantization,
)
from tools.techniques.base import CalibrationData

_log = get_logger("lerobot.coverage")
Variant = Literal["int8_static_qdq", "int8_dynamic", "fp16"]
# Weights per channel, activations symmetric int8 (TensorRT's QDQ form), on the ops that carry the FLOPs; the
# normalization Mul/Add at the graph's edges stay float (their per-feature constants break per-axis QDQ).
TENSORRT_QDQ = OrtInt8StaticConfig(
    per_channel=True,
    activation_type="int8",
    symmetric_activations=True,
    op_types_to_quantize=("Conv", "MatMul", "Gemm"),
)

ORT_CPU_QDQ = OrtInt8StaticConfig(per_channel=True, op_types_to_quantize=("Conv", "MatMul", "Gemm"))


class VariantResult(BaseModel):
    """One measured precision variant of an exported policy."""

    variant: str
    directory: Path
    bytes: int = Field(description="Bytes of the variant's ONNX files.")
    p50_ms: float | None = Field(
        description="Median latency of one policy call (ORT CPU, 1 thread, this machine); None when not timed."
    )
    parity: ParityReport = Field(description="Actions against the torch policy on held-out observations.")
    facts: dict[str, Any] = Field(default_factory=dict)


def p50_latency(call: Callable[[], Any], warmup: int = 2, runs: int = 10) -> float:
    """Median wall time of `call` in milliseconds after `warmup` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def require_disjoint(
    calibration: Sequence[Mapping[str, torch.Tensor]], held_out: Sequence[Mapping[str, torch.Tensor]]
) -> None:
    """Refuse held-out observations that were also used for calibration (the parity would flatter)."""
    seen = {_fingerprint(batch) for batch in calibration}
    if any(_fingerprint(batch) in seen for batch in held_out):
        raise ValidationError(
            "a held-out observation batch is also a calibration batch",
            hint="measure parity on observations that calibration never saw",
        )


def _fingerprint(batch: Mapping[str, torch.Tensor]) -> tuple[Any, ...]:
    return tuple(
        (name, tuple(value.shape), float(value.double().sum())) for name, value in sorted(batch.items())
    )


def static_int8_qdq(
    source: Path,
    output: Path,
    calibration: Sequence[Mapping[str, torch.Tensor]],
    config: OrtInt8StaticConfig = TENSORRT_QDQ,
) -> Path:
    """Quantize a policy graph to static INT8 QDQ with activation ranges from `calibration` observations."""
    import onnx

    if not calibration:
        raise ValidationError("static INT8 needs calibration observations", hint="give recorded observations")
    prepared = Path(output).with_suffix(".prepared.onnx")
    preprocess_for_quantization(Path(source), prepared)
    model = onnx.load(str(prepared))
    data = CalibrationData(batches=[dict(batch) for batch in calibration], source="observations")
    feeds = CalibrationFeeds(model, data, config.calibration_batches, config.max_batch_rows)
    quantize_static_qdq(prepared, Path(output), feeds, config)
    prepared.unlink(missing_ok=True)
    return Path(output)


def dynamic_int8(source: Path, output: Path) -> Path:
    """Quantize MatMul/Gemm weights to INT8 (activations at run time); Conv stays float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = Path(output).with_suffix(".prepared.onnx")
    preprocess_for_quantization(Path(source), prepared)
    model = onnx.load(str(prepared))
    gemm_to_matmul(model)
    onnx.save(model, str(prepared))
    with quiet_ort_quantization():
        quantize_dynamic(
            str(prepared), str(output), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8
        )
    prepared.unlink(missing_ok=True)
    return Path(output)


def fp16(source: Path, output: Path, config: OnnxFp16Config | None = None) -> Path:
    """Convert a graph to FP16 compute and weights, keeping float32 inputs and outputs."""
    import onnx

    converted = convert_to_fp16(onnx.load(str(source)), config or OnnxFp16Config())
    onnx.save(converted, str(output))
    return Path(output)


def onnx_policy_variant(
    source_dir: Path,
    variant: Variant,
    directory: Path,
    module: nn.Module,
    input_specs: Sequence[InputSpec],
    held_out: Sequence[Mapping[str, torch.Tensor]],
    calibration: Sequence[Mapping[str, torch.Tensor]] | None = None,
    static_config: OrtInt8StaticConfig = TENSORRT_QDQ,
) -> VariantResult:
    """Write one precision variant of a single-forward policy export and measure it against `module`.

    `static_config` shapes int8_static_qdq: TensorRT's symmetric int8 by default; `ORT_CPU_QDQ` (uint8
    activations) suits ONNX Runtime's x86 kernels.
    """
    require_disjoint(calibration or [], held_out)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = Path(source_dir) / POLICY_ONNX
    output = directory / POLICY_ONNX
    if variant == "int8_static_qdq":
        static_int8_qdq(source, output, calibration or [], static_config)
    elif variant == "int8_dynamic":
        dynamic_int8(source, output)
    elif variant == "fp16":
        fp16(source, output)
    else:
        raise ValidationError(f"unknown variant {variant!r}; use int8_static_qdq, int8_dynamic or fp16")
    for name in ("export.json",):
        if (Path(source_dir) / name).is_file():
            shutil.copyfile(Path(source_dir) / name, directory / name)
    reference = torch_reference(module, input_specs, held_out, ["action"])
    parity = onnx_parity(output, reference, held_out, f"onnx {variant} vs torch")
    parity.save(directory)
    session = cpu_session(output, "extended")
    single = {name: value[:1] for name, value in held_out[0].items()}
    latency = p50_latency(lambda: run_onnx(session, single))
    facts = {"static_config": static_config.model_dump(mode="json")} if variant == "int8_static_qdq" else {}
    return VariantResult(
        variant=variant,
        directory=directory,
        bytes=output.stat().st_size,
        p50_ms=latency,
        parity=parity,
        facts=facts,
    )


def diffusion_fp16_variant(
    source_dir: Path,
    directory: Path,
    module: nn.Module,
    held_out: Sequence[Mapping[str, torch.Tensor]],
    steps: Sequence[int | None] = (None,),
    config: OnnxFp16Config | None = None,
    time_it: bool = True,
) -> VariantResult:
    """Write the FP16 encoder and denoiser of an exported Diffusion Policy and measure the runner's actions."""
    from tools.lerobot.diffusion_export import diffusion_parity

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_ONNX, DENOISER_ONNX):
        fp16(Path(source_dir) / name, directory / name, config)
    shutil.copyfile(Path(source_dir) / SAMPLER_FILE, directory / SAMPLER_FILE)
    parity = diffusion_parity(module, directory, held_out, steps, what="onnx fp16 runner vs torch")
    parity.save(directory)
    latency = None
    if time_it:
        runner = DiffusionOnnxRunner(directory)
        single = {name: value[:1].numpy() for name, value in held_out[0].items()}
        latency = p50_latency(lambda: runner(single), warmup=1, runs=5)
    size = sum((directory / name).stat().st_size for name in (ENCODER_ONNX, DENOISER_ONNX))
    return VariantResult(variant="fp16", directory=directory, bytes=size, p50_ms=latency, parity=parity)


def fp32_onnx_latency(directory: Path, held_out: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """p50 latency of the fp32 export in `directory` (single-forward graph or diffusion runner), batch 1."""
    directory = Path(directory)
    if (directory / SAMPLER_FILE).is_file():
        runner = DiffusionOnnxRunner(directory)
        single = {name: value[:1].numpy() for name, value in held_out[0].items()}
        return p50_latency(lambda: runner(single), warmup=1, runs=5)
    session = cpu_session(directory / POLICY_ONNX, "extended")
    batch = {name: value[:1] for name, value in held_out[0].items()}
    return p50_latency(lambda: run_onnx(session, batch))
