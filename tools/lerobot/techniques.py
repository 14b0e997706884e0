"""LeRobot's own techniques: the Diffusion Policy sampler export and fewer denoising steps (DDIM).

This adapter sits above the generic families and registers in the one registry (`ADAPTER_MODULES`), so no
generic part imports `tools.lerobot`.

`lerobot_sampler_export` exports a Diffusion Policy as its deployable sampler: encoder.onnx + denoiser.onnx +
sampler.json.

A DDPM Diffusion Policy draws fresh noise at each of its (default 100) denoising steps, so the whole policy is
no single graph and `onnx_export` cannot prove parity for it. This technique exports the two networks and
writes the loop as data (`tools.lerobot.diffusion_export`), and the version it stores is the runner directory
(format `lerobot_sampler`), which loads as `SamplerRunnerModule` with the torch policy's noise, so evaluation
measures the runner end to end against the original. `fp16` converts both graphs to FP16 (the scheduler math
stays float32); it applies to the policy directly or to an earlier fp32 sampler version.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from pydantic import Field

from tools.compression.onnx_export import parity_batches
from tools.errors import NotApplicableError, OptimizationError, ValidationError
from tools.intake.types import LoadOptions, ModelFormat
from tools.lerobot.coverage import fp16
from tools.lerobot.diffusion_export import export_diffusion_onnx, within_budget
from tools.lerobot.sampler import DENOISER_ONNX, ENCODER_ONNX, SAMPLER_FILE, SamplerSchedule
from tools.lerobot.sampler_module import SamplerRunnerModule, write_runner_facts
from tools.log import get_logger
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register

_log = get_logger("lerobot.techniques")
RUNNER_DIRECTORY = "sampler"


class LeRobotSamplerExportConfig(TechniqueConfig):
    """Export a LeRobot Diffusion Policy's encoder and denoiser to ONNX with its sampling loop as data."""

    type: Literal["lerobot_sampler_export"] = "lerobot_sampler_export"
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Denoising steps the runner takes; None keeps the policy's own (fewer is faster and lossy).",
        json_schema_extra={"search": [None, 50, 10]},
    )
    fp16: bool = Field(
        default=False,
        description="Convert both graphs to FP16 compute and weights (scheduler math in float32).",
    )
    max_abs_error: float = Field(
        default=1e-3, gt=0, description="Largest action difference allowed between the fp32 runner and torch."
    )
    min_cosine: float = Field(
        default=0.999,
        gt=0,
        le=1,
        description="Smallest cosine allowed between the fp32 runner's and torch's actions.",
    )


def _diffusion_source(ctx: TechniqueContext, technique: str) -> None:
    """Refuse a source that is not a LeRobot Diffusion Policy (or its exported sampler)."""
    policy = ctx.source.metadata.get("policy") or {}
    if policy.get("type") != "diffusion":
        raise NotApplicableError(
            f"{technique} applies to LeRobot Diffusion Policies, not {policy.get('type') or 'this model'}",
            hint="single-forward policies (ACT) and other models export whole with onnx_export",
        )


def _export_fp32(
    ctx: TechniqueContext, config: LeRobotSamplerExportConfig, directory: Path
) -> dict[str, Any]:
    """Export the torch policy into `directory` with parity against it; return the export facts."""
    module = ctx.require_module(config.type)
    batches, source = parity_batches(ctx, 2)
    ctx.progress(20, "lerobot_sampler_export: exporting the encoder and the denoiser")
    started = time.perf_counter()
    export = export_diffusion_onnx(
        module, directory, held_out=batches, max_abs_error=config.max_abs_error, min_cosine=config.min_cosine
    )
    write_runner_facts(
        directory,
        dict(ctx.source.metadata["policy"]),
        [spec.model_dump(mode="json") for spec in ctx.source.input_specs],
        module.initial_noise.numpy(),
    )
    return {
        "export_seconds": round(time.perf_counter() - started, 2),
        "scheduler": export.manifest["scheduler"],
        "parity": {**export.parity.model_dump(mode="json"), "inputs_source": source},
    }


def _copy_runner(source: Path, directory: Path) -> None:
    """Copy a runner directory's files (graphs, schedule, noise, facts) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for child in Path(source).iterdir():
        if child.is_file():
            shutil.copyfile(child, directory / child.name)


def _to_fp16(source: Path, directory: Path) -> None:
    """Write `source`'s runner with FP16 graphs into `directory` (inputs and outputs stay float32)."""
    _copy_runner(source, directory)
    for name in (ENCODER_ONNX, DENOISER_ONNX):
        fp16(Path(source) / name, directory / name)


def _set_steps(directory: Path, steps: int) -> None:
    """Make the runner take `steps` denoising steps by default."""
    schedule = SamplerSchedule.load(directory)
    schedule.timesteps(steps)  # refuses a count the scheduler cannot take
    schedule.model_copy(update={"num_inference_steps": steps}).save(directory)


AGREEMENT_BUDGET_S = 30.0  # the source's share: a default-size DDPM policy takes 35 s a chunk in eager torch


def _agreement(ctx: TechniqueContext, directory: Path) -> dict[str, Any]:
    """Worst action difference between the new runner and the source version on two input batches, or on
    one batch-1 observation when the source is too slow for `AGREEMENT_BUDGET_S` (`within_budget`;
    evaluation judges the version on the job's held-out data either way)."""
    runner = SamplerRunnerModule(directory)
    source = ctx.source.module
    batches, _ = parity_batches(ctx, 2)

    def compare(batch: Mapping[str, torch.Tensor]) -> tuple[float, float, int]:
        expected = source(**batch).float().flatten()
        actions = runner(**batch).float().flatten()
        cosine = float(torch.nn.functional.cosine_similarity(actions, expected, dim=0))
        return float((actions - expected).abs().max()), cosine, int(next(iter(batch.values())).shape[0])

    with torch.inference_mode():
        results, _ = within_budget(compare, batches, AGREEMENT_BUDGET_S)
    return {
        "max_abs_error": max(r[0] for r in results),
        "cosine": min(r[1] for r in results),
        "observations": sum(r[2] for r in results),
    }


_SAMPLER_SPEC: dict[str, Any] = dict(  # what both sampler techniques need, take, give and run on
    needs=Needs(
        packages=("onnx", "onnxruntime", "onnxscript", "lerobot"),
        install_hint="pip install 'robopt[lerobot]'",
    ),
    input_formats=(ModelFormat.LEROBOT_POLICY.value, ModelFormat.LEROBOT_SAMPLER.value),
    output_format=ModelFormat.LEROBOT_SAMPLER.value,
    runtimes=("onnxruntime-cpu", "onnxruntime-cuda"),
    precision="fp32",
)


@register(
    LeRobotSamplerExportConfig,
    TechniqueSpec(
        name="lerobot_sampler_export",
        family=Family.EXPORT,
        summary="Export a LeRobot Diffusion Policy as encoder.onnx + denoiser.onnx + sampler.json run by a numpy "
        "denoising loop in ONNX Runtime (DDPM included), with action parity; optionally FP16 graphs.",
        **_SAMPLER_SPEC,
        expected_effect="Same actions as the torch policy under the same noise (max abs error < 1e-3); the "
        "denoising loop runs in ONNX Runtime instead of eager PyTorch. fp16 halves the graphs' size.",
    ),
)
def _apply_sampler_export(ctx: TechniqueContext, config: LeRobotSamplerExportConfig) -> TechniqueProduct:
    """Export (or convert) the diffusion sampler and store the runner directory as the version's artifact."""
    _diffusion_source(ctx, config.type)
    directory = ctx.work_dir / RUNNER_DIRECTORY
    facts: dict[str, Any] = {"fp16": config.fp16}
    from_policy = ctx.source.format == ModelFormat.LEROBOT_POLICY
    if from_policy and not config.fp16:
        facts.update(_export_fp32(ctx, config, directory))
    elif from_policy:
        fp32 = ctx.work_dir / "fp32"
        facts.update(_export_fp32(ctx, config, fp32))
        _to_fp16(fp32, directory)
    elif config.fp16:
        _to_fp16(Path(ctx.source.path), directory)
    elif config.num_inference_steps is None:
        raise OptimizationError(
            "version is already an fp32 sampler export; set fp16 or num_inference_steps to change it"
        )
    else:
        _copy_runner(Path(ctx.source.path), directory)
    if config.num_inference_steps is not None:
        _set_steps(directory, config.num_inference_steps)
    facts["num_inference_steps"] = json.loads((directory / SAMPLER_FILE).read_text())["num_inference_steps"]
    if config.fp16 or config.num_inference_steps is not None or not from_policy:
        ctx.progress(80, "lerobot_sampler_export: comparing the new runner's actions with the source's")
        facts["agreement_with_source"] = _agreement(ctx, directory)
    facts["bytes"] = sum(p.stat().st_size for p in directory.iterdir() if p.suffix == ".onnx")
    _log.info("exported a diffusion sampler", extra={"job_id": ctx.job_id, "technique": config.type})
    return TechniqueProduct(directory, ModelFormat.LEROBOT_SAMPLER.value, LoadOptions(), facts)


class DiffusionFewerStepsConfig(TechniqueConfig):
    """Sample a Diffusion Policy with DDIM in fewer denoising steps, through its exported sampler runner."""

    type: Literal["lerobot_fewer_steps"] = "lerobot_fewer_steps"
    num_inference_steps: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Denoising steps the DDIM runner takes (Diffusion Policy's authors run 10 against 100 "
        "training steps); at most the policy's training timesteps. Fewer is faster and lossier.",
        json_schema_extra={"search": [50, 20, 10]},
    )
    scheduler: Literal["DDIM"] = Field(
        default="DDIM",
        description="The scheduler the runner switches to: deterministic DDIM (eta 0), which, unlike DDPM, "
        "keeps its quality at few steps.",
    )


def _switch_scheduler(directory: Path, config: DiffusionFewerStepsConfig) -> dict[str, Any]:
    """Rewrite the runner's schedule to `config.scheduler` at `config.num_inference_steps`; return what changed."""
    schedule = SamplerSchedule.load(directory)
    steps = config.num_inference_steps
    if steps > schedule.num_train_timesteps:
        raise ValidationError(
            f"num_inference_steps {steps} exceeds the policy's {schedule.num_train_timesteps} training timesteps",
            hint=f"choose 1 to {schedule.num_train_timesteps} steps",
        )
    if schedule.kind == config.scheduler and schedule.num_inference_steps == steps:
        raise NotApplicableError(
            f"the sampler already runs {config.scheduler} at {steps} steps; nothing to change",
            hint="choose fewer num_inference_steps",
        )
    switched = schedule.model_copy(update={"kind": config.scheduler, "num_inference_steps": steps})
    switched.timesteps(steps)  # refuses a count the scheduler cannot take
    switched.save(directory)
    return {
        "scheduler": config.scheduler,
        "source_scheduler": schedule.kind,
        "num_inference_steps": steps,
        "source_num_inference_steps": schedule.num_inference_steps,
        "num_train_timesteps": schedule.num_train_timesteps,
    }


@register(
    DiffusionFewerStepsConfig,
    TechniqueSpec(
        name="lerobot_fewer_steps",
        family=Family.EXPORT,
        summary="Sample a LeRobot Diffusion Policy (DDPM or DDIM) with DDIM in fewer denoising steps, exported "
        "as its encoder.onnx + denoiser.onnx + sampler.json runner; lossy, judged by action agreement.",
        **_SAMPLER_SPEC,
        expected_effect="Latency per action chunk falls with the number of denoiser calls (100 -> 10 steps: about "
        "10x on the denoising loop); the actions change (a different sampler), so evaluation measures their "
        "agreement. The graphs keep their precision; FP16 (lerobot_sampler_export fp16) may follow.",
    ),
)
def _apply_fewer_steps(ctx: TechniqueContext, config: DiffusionFewerStepsConfig) -> TechniqueProduct:
    """Export (or copy) the diffusion sampler and switch it to DDIM at the configured number of steps."""
    _diffusion_source(ctx, config.type)
    directory = ctx.work_dir / RUNNER_DIRECTORY
    facts: dict[str, Any] = {}
    if ctx.source.format == ModelFormat.LEROBOT_POLICY:
        facts.update(_export_fp32(ctx, LeRobotSamplerExportConfig(), directory))
    else:
        _copy_runner(Path(ctx.source.path), directory)
    facts.update(_switch_scheduler(directory, config))
    ctx.progress(80, "lerobot_fewer_steps: comparing the new runner's actions with the source's")
    facts["agreement_with_source"] = _agreement(ctx, directory)
    facts["bytes"] = sum(p.stat().st_size for p in directory.iterdir() if p.suffix == ".onnx")
    _log.info(
        "switched a diffusion sampler to fewer steps", extra={"job_id": ctx.job_id, "technique": config.type}
    )
    return TechniqueProduct(directory, ModelFormat.LEROBOT_SAMPLER.value, LoadOptions(), facts)
