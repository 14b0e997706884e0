"""Types shared by intake, profiling and measurement: formats, load options, and a loaded model."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from tools.inputs import InputSpec, synthesize_inputs


class ModelFormat(str, Enum):
    """Model formats recognized by content."""

    TORCHSCRIPT = "torchscript"
    TORCH_STATE_DICT = "torch_state_dict"
    TORCH_PICKLED_MODULE = "torch_pickled_module"
    SAFETENSORS = "safetensors"
    HF_DIRECTORY = "hf_directory"
    LEROBOT_POLICY = "lerobot_policy"
    LEROBOT_SAMPLER = "lerobot_sampler"
    ONNX = "onnx"
    TF_SAVEDMODEL = "tf_savedmodel"
    KERAS = "keras"
    ARCHIVE = "archive"


class Runtime(str, Enum):
    """What executes a loaded model."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class LoadOptions(BaseModel):
    """How to load a model file: everything beyond the file that a loader may need, and the trust flags.

    Serializable, so that a child process (latency measurement, an optimization attempt) can load the same
    model the same way.
    """

    model_config = ConfigDict(frozen=True)

    architecture: str | None = Field(
        default=None,
        description="`module:Class` that builds the network for a state dict or safetensors file.",
    )
    config_path: Path | None = Field(
        default=None,
        description="A Hugging Face config.json (or JSON kwargs for `architecture`) for weight-only files.",
    )
    trust_pickle: bool = Field(
        default=False,
        description="Allow unpickling whole pickled modules: model classes of torch, transformers, LeRobot, "
        "torchao, bitsandbytes and of `trusted_packages` only (an allowlist; nothing else is imported).",
    )
    trusted_packages: tuple[str, ...] = Field(
        default=(),
        description="Top-level packages whose classes a trusted pickle may construct besides the model libraries "
        "(the user's own, e.g. 'mypolicies').",
    )
    trusted_globals: tuple[str, ...] = Field(
        default=(),
        description="Exact globals admitted besides the allowlist: robopt records them for the versions it writes "
        "(hooks, kernel rebuilders, schedulers of a model the user already trusted), sha256-checked on load.",
    )
    trust_remote_code: bool = Field(default=False, description="Allow Hugging Face models with custom code.")
    input_specs: tuple[InputSpec, ...] = Field(
        default=(), description="Given input specs; override inference."
    )


@dataclass
class LoadedModel:
    """A validated, loaded model with its input specification, ready to profile or run.

    Exactly one of `module` (torch runtimes) or `session` (ONNX Runtime) is set.
    """

    source: Path
    path: Path
    format: ModelFormat
    options: LoadOptions
    input_specs: list[InputSpec]
    module: torch.nn.Module | None = None
    session: Any | None = None
    output_names: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        """The runtime that executes this model."""
        return Runtime.TORCH if self.module is not None else Runtime.ONNXRUNTIME

    def example_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Deterministic synthetic inputs matching the input specification."""
        return synthesize_inputs(self.input_specs, seed=seed)
