"""The technique contract: a typed config, the metadata the planner reads, and what a handler gets and returns.

A technique is a frozen pydantic config (its `type` literal is the technique's name) plus one handler
`(context, config) -> TechniqueProduct` registered for that config type in `tools.techniques.registry`.
Handlers transform; they never judge. Evaluation measures the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import OptimizationError
from tools.intake.types import LoadedModel, LoadOptions

ProgressCallback = Callable[[float, str], None]
"""Called with a percentage in [0, 100] and a short message."""


class Family(str, Enum):
    """Technique families, one module each in `tools/`."""

    QUANTIZATION = "quantization"
    PRUNING = "pruning"
    DISTILLATION = "distillation"
    ARCHITECTURE_SEARCH = "architecture_search"
    COMPRESSION = "compression"
    EXPORT = "export"


RuntimeName = Literal["torch-cpu", "torch-cuda", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "int4", "nf4", "fp4", "mixed"]


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, no unknown fields, a `type` discriminator and a seed.

    Subclasses declare `type: Literal["name"] = "name"` and described, defaulted, range-checked fields; a
    field's search range lives in `json_schema_extra={"search": [...]}` next to its default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    seed: int = Field(default=0, ge=0, description="Seed for every random choice the technique makes.")


class Needs(BaseModel):
    """What a technique needs beyond the model."""

    model_config = ConfigDict(frozen=True)

    calibration_data: bool = Field(
        default=False, description="Representative inputs (user data or synthetic)."
    )
    labels: bool = Field(default=False, description="Ground-truth targets for the inputs.")
    gpu: bool = Field(default=False, description="A CUDA device.")
    packages: tuple[str, ...] = Field(
        default=(), description="Importable optional packages (import names), e.g. ('torchao',)."
    )
    install_hint: str = Field(default="", description="How to install what is missing.")


class TechniqueSpec(BaseModel):
    """Registry metadata: what the planner sees about a technique."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Equal to the config's `type`.")
    family: Family
    summary: str = Field(description="One line: what it does to the model.")
    needs: Needs = Field(default_factory=Needs)
    input_formats: tuple[str, ...] = Field(
        description="`tools.intake.ModelFormat` values it accepts (what the source version is stored as)."
    )
    output_format: str = Field(description="`tools.intake.ModelFormat` value of the artifact it writes.")
    runtimes: tuple[RuntimeName, ...] = Field(description="Runtimes that can execute its output.")
    precision: Precision = Field(description="Weight precision of the output.")
    expected_effect: str = Field(
        description="What it is expected to change, as measured by the technique benchmark on this kind of "
        "machine (see `measured_effects`), never inferred from the technique's name."
    )


@dataclass
class CalibrationData:
    """Inputs (and optional labels) a technique may use: user data, or synthetic inputs from the input specs.

    `batches` are input dicts keyed by input name; `labels`, when given, align with `batches` one to one.
    `source` says where they came from ("user", "synthetic", "reference-task").
    """

    batches: list[dict[str, torch.Tensor]]
    labels: list[torch.Tensor] | None = None
    source: str = "synthetic"
    notes: list[str] = field(default_factory=list)  # how a user's arrays were matched to the inputs
    holdout_from: int | None = None  # first held-out batch when the data fixes its own split (whole episodes)

    def __post_init__(self) -> None:
        if not self.batches:
            raise OptimizationError("calibration data holds no batches")
        if self.labels is not None and len(self.labels) != len(self.batches):
            raise OptimizationError(
                f"calibration data has {len(self.batches)} input batches but {len(self.labels)} label batches"
            )

    def split(self, holdout_fraction: float = 0.25) -> tuple["CalibrationData", "CalibrationData"]:
        """Split into (train, held-out) keeping order; both parts hold at least one batch.

        Data that fixes its own split (`holdout_from`: a LeRobot dataset's held-out episodes) is cut there.
        """
        if self.holdout_from is not None and 0 < self.holdout_from < len(self.batches):
            cut = self.holdout_from
        elif len(self.batches) < 2:
            return self, self
        else:
            cut = min(len(self.batches) - 1, max(1, round(len(self.batches) * (1 - holdout_fraction))))
        labels = self.labels
        first = CalibrationData(self.batches[:cut], labels[:cut] if labels else None, self.source, self.notes)
        second = CalibrationData(
            self.batches[cut:], labels[cut:] if labels else None, self.source, self.notes
        )
        return first, second


@dataclass
class TechniqueContext:
    """What a handler gets besides its config: the loaded source version and where to write.

    `source` is loaded from the version store; `work_dir` is an empty folder that `apply` removes afterwards;
    the handler writes its artifact inside it and returns it in a `TechniqueProduct`.
    """

    source: LoadedModel
    source_version: str
    job_id: str
    work_dir: Path
    data_dir: Path
    calibration: CalibrationData | None
    progress: ProgressCallback
    time_budget_s: float | None = None

    def require_module(self, technique: str) -> torch.nn.Module:
        """Return the source as an eager torch module, or explain which techniques accept what it is."""
        module = self.source.module
        if module is None or isinstance(module, torch.jit.ScriptModule):
            what = "a TorchScript archive" if module is not None else "an ONNX model"
            raise OptimizationError(
                f"{technique} transforms eager PyTorch modules, but version {self.source_version} is {what}",
                hint="apply it to a PyTorch version (state dict + architecture, pickled module or HF directory) "
                "before exporting to ONNX",
            )
        return module

    def require_calibration(self, technique: str) -> CalibrationData:
        """Return the calibration data, or fail saying that this technique needs some."""
        if self.calibration is None:
            raise OptimizationError(
                f"{technique} needs calibration inputs and none were given",
                hint="pass representative inputs (an .npz with one array per model input) or let robopt "
                "synthesize them from the input specs",
            )
        return self.calibration


@dataclass
class TechniqueProduct:
    """A handler's result: the artifact it wrote inside `work_dir`, how to load it, and the facts it knows.

    `facts` are things the transform itself establishes (sparsity reached, parameters removed, export parity,
    accuracy recovered on held-out inputs); latency, size on disk and task accuracy are measured by
    evaluation, not here.
    """

    artifact: Path
    format: str
    load_options: LoadOptions = field(default_factory=LoadOptions)
    facts: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[TechniqueContext, Any], TechniqueProduct]


def synthetic_calibration(
    specs: list[Any], num_batches: int = 4, batch_size: int = 1, seed: int = 0
) -> CalibrationData:
    """Synthesize calibration batches from input specs (`tools.inputs.InputSpec`) when the user gave no data.

    Synthetic inputs exercise every layer but not the data distribution; prefer user data when there is some.
    """
    from tools.inputs import synthesize_inputs

    batches = []
    for index in range(num_batches):
        sized = [spec.model_copy(update={"shape": (batch_size, *spec.shape[1:])}) for spec in specs]
        batches.append(synthesize_inputs(sized, seed=seed + index))
    return CalibrationData(batches, None, source="synthetic")


def calibration_from_data(
    data: dict[str, torch.Tensor],
    specs: list[Any],
    *,
    label_key: str | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
) -> CalibrationData:
    """Split a user's tensor dict (N samples per array, e.g. from `tools.inputs.load_input_data`) into batches.

    Arrays are matched to the model's inputs by name (checked against the specs); `label_key`, when given,
    names the array of targets.
    """
    from tools.errors import InputSpecError
    from tools.inputs import check_data_matches

    check_data_matches(specs, data)
    names = [spec.name for spec in specs]
    count = int(data[names[0]].shape[0])
    if any(int(data[name].shape[0]) != count for name in names):
        raise InputSpecError("the data arrays hold different numbers of samples")
    if label_key is not None and label_key not in data:
        raise InputSpecError(
            f"data has no array named {label_key!r} for labels (has: {', '.join(sorted(data))})"
        )
    if label_key is not None and int(data[label_key].shape[0]) != count:
        raise InputSpecError(
            f"labels {label_key!r} hold {int(data[label_key].shape[0])} samples, inputs {count}"
        )
    if batch_size <= 0:
        raise InputSpecError(f"batch_size must be positive, got {batch_size}")
    batches, labels = [], []
    for start in range(0, count, batch_size):
        if max_batches is not None and len(batches) >= max_batches:
            break
        part = slice(start, start + batch_size)
        batches.append({name: data[name][part] for name in names})
        if label_key is not None:
            labels.append(data[label_key][part])
    return CalibrationData(batches, labels if label_key is not None else None, source="user")
