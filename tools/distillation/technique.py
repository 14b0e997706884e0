"""The `distill` technique: recover what a structural change cost by distilling from the model before it.

The student is the source version (a pruned or sliced model); the teacher is another version of the same
job, by default the source's parent. The version store lives at `<data_dir>/versions` by convention.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from tools.distillation.core import distill_module
from tools.errors import NotFoundError, OptimizationError, ValidationError
from tools.intake import LoadedModel, ModelFormat
from tools.techniques.artifacts import TORCH_INPUTS, load_version, run_outputs, save_module_product
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register
from tools.versions import VersionStore


class DistillConfig(TechniqueConfig):
    """Distil the source version (student) from a teacher version on calibration data, labels optional."""

    type: Literal["distill"] = "distill"
    teacher_version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Version id of the teacher in the same job; default: the source's parent (the model "
        "before the step being recovered from).",
    )
    steps: int = Field(
        default=300,
        ge=1,
        le=100_000,
        description="Optimizer steps at most.",
        json_schema_extra={"search": [100, 300, 1000]},
    )
    lr: float = Field(
        default=2e-4,
        gt=0,
        le=1.0,
        description="Peak AdamW learning rate (linear warm-up, cosine decay).",
        json_schema_extra={"search": [5e-5, 2e-4, 5e-4]},
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Samples per step; default: the calibration batch size."
    )
    output_loss: Literal["auto", "mse", "kl"] = Field(
        default="auto",
        description="Loss on the outputs: MSE (continuous outputs such as actions), KL with temperature "
        "(logits), or auto (KL for outputs whose last dimension is the vocabulary, else MSE).",
    )
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softmax temperature of the KL loss.")
    feature_pairs: tuple[tuple[str, str], ...] = Field(
        default=(),
        description="(teacher module, student module) names whose outputs are matched too; a learned linear "
        "projection maps the student's width to the teacher's where they differ.",
    )
    output_weight: float = Field(default=1.0, ge=0, le=100, description="Weight of the output loss.")
    feature_weight: float = Field(default=1.0, ge=0, le=100, description="Weight of the feature loss.")
    task_weight: float = Field(
        default=1.0, ge=0, le=100, description="Weight of the loss against labels, when the data has labels."
    )
    holdout_fraction: float = Field(
        default=0.25, ge=0.05, le=0.5, description="Share of calibration batches kept out for the report."
    )
    time_budget_s: float | None = Field(
        default=None, gt=0, le=86_400, description="Stop training after this many seconds."
    )

    @model_validator(mode="after")
    def _something_to_learn(self) -> "DistillConfig":
        if (
            self.output_weight == 0
            and self.task_weight == 0
            and not (self.feature_pairs and self.feature_weight)
        ):
            raise ValueError("output_weight, task_weight and the feature loss are all zero: nothing to learn")
        if any(not t or not s for t, s in self.feature_pairs):
            raise ValueError(f"feature_pairs hold an empty module name: {self.feature_pairs}")
        return self


class _SessionTeacher:
    """A teacher that only gives outputs: an ONNX Runtime session (or TorchScript) behind a callable."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        return run_outputs(self.loaded, inputs)


def teacher_version_id(ctx: TechniqueContext, requested: str | None) -> str:
    """The teacher's version id: the one requested, or the source's parent."""
    store = VersionStore(ctx.data_dir / "versions")
    if requested is None:
        parent = store.get(ctx.job_id, ctx.source_version).parent
        if parent is None:
            raise ValidationError(
                f"version {ctx.source_version} of job {ctx.job_id} is the original and has no parent to "
                "distil from",
                hint="name a teacher_version, or apply distill to a version made by pruning or slicing",
            )
        requested = parent
    if requested == ctx.source_version:
        raise ValidationError(f"teacher_version {requested} is the source version itself; name another one")
    known = [manifest.id for manifest in store.list(ctx.job_id)]
    if requested not in known:
        raise NotFoundError(
            f"teacher version {requested!r} of job {ctx.job_id!r} not found (versions: {', '.join(known) or 'none'})",
            hint="name an existing version of the same job as teacher_version",
        )
    return requested


def _load_teacher(ctx: TechniqueContext, version: str, config: DistillConfig) -> Any:
    loaded = load_version(VersionStore(ctx.data_dir / "versions"), ctx.job_id, version, ctx.data_dir)
    module = loaded.module
    if module is not None and not isinstance(module, torch.jit.ScriptModule):
        return module
    if config.feature_pairs:
        raise OptimizationError(
            f"feature_pairs need an eager PyTorch teacher, but version {version} is {loaded.format.value}",
            hint="drop feature_pairs, or take a PyTorch version as the teacher",
        )
    return _SessionTeacher(loaded)


@register(
    DistillConfig,
    TechniqueSpec(
        name="distill",
        family=Family.DISTILLATION,
        summary="Fine-tune the model to match a teacher version (by default the one before the last step) on "
        "calibration data, plus the labels when given.",
        needs=Needs(calibration_data=True),
        input_formats=TORCH_INPUTS,
        output_format=ModelFormat.TORCH_PICKLED_MODULE.value,
        runtimes=("torch-cpu", "torch-cuda"),
        precision="fp32",
        expected_effect="recovers part of the fidelity and task accuracy lost by pruning or slicing; size and "
        "latency unchanged; when training makes the held-out split worse, the weights before are kept",
    ),
)
def _apply_distill(ctx: TechniqueContext, config: DistillConfig) -> TechniqueProduct:
    student = ctx.require_module("distill")
    data = ctx.require_calibration("distill")
    odd = sorted(
        {str(p.dtype) for p in student.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    )
    if odd:
        raise OptimizationError(
            f"distill trains float32 students, version {ctx.source_version} holds {', '.join(odd)} weights",
            hint="distil before quantizing or casting",
        )
    teacher_id = teacher_version_id(ctx, config.teacher_version)
    teacher = _load_teacher(ctx, teacher_id, config)
    budgets = [b for b in (config.time_budget_s, ctx.time_budget_s) if b is not None]
    report = distill_module(
        teacher,
        student,
        data,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        time_budget_s=min(budgets) if budgets else None,
        feature_pairs=config.feature_pairs,
        output_weight=config.output_weight,
        feature_weight=config.feature_weight,
        task_weight=config.task_weight,
        output_loss=config.output_loss,
        temperature=config.temperature,
        holdout_fraction=config.holdout_fraction,
        seed=config.seed,
        progress=lambda percent, message: ctx.progress(min(percent, 95.0), message),
    )
    facts = {
        "teacher_version": teacher_id,
        "parameters": sum(p.numel() for p in student.parameters()),
        "calibration_source": data.source,
        **report.as_facts(),
    }
    return save_module_product(ctx, student, facts)
