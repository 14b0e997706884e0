"""The model profile behind `robopt analyze`: typed, documented, JSON-serializable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from tools.intake.types import ModelFormat, Runtime
from tools.latency import LatencyResult

ComponentRole = Literal["vision_tower", "language_backbone", "action_head", "projector", "other"]
ArchitectureKind = Literal["vla", "vlm", "visual_policy", "transformer", "cnn", "mlp", "unknown"]

FLOPS_CONVENTION = (
    "2 FLOPs per multiply-accumulate of matrix multiplications, convolutions and attention (torch's "
    "FlopCounterMode convention); elementwise ops, norms and activations are not counted"
)


class TensorInfo(BaseModel):
    """Name, shape and dtype of one model input or output."""

    name: str
    shape: list[int | str] = Field(description="Concrete dims; a string only where a dim is symbolic.")
    dtype: str = Field(description="torch-style dtype name, e.g. 'float32', 'int64'.")


class ComponentProfile(BaseModel):
    """Parameters and FLOPs of one top-level component (a module subtree, or an ONNX initializer prefix)."""

    name: str = Field(
        description="Dotted module path such as 'model.vision_tower'; '(root)' for own parameters."
    )
    role: ComponentRole = Field(description="Detected role, from the module's name, class and content.")
    module_type: str | None = Field(default=None, description="Class name of the module (None for ONNX).")
    parameters: int = Field(description="Parameter elements; tied parameters are counted once, at first use.")
    parameter_bytes: int
    flops: int | None = Field(default=None, description="FLOPs of one forward pass inside this component.")


class LayerTypeProfile(BaseModel):
    """Parameters grouped by the layer that owns them: torch module class, or the consuming ONNX op type."""

    layer_type: str
    modules: int = Field(
        description="Number of modules (torch) or nodes (ONNX) of this type that own weights."
    )
    parameters: int
    parameter_bytes: int


class DtypeProfile(BaseModel):
    """Parameters grouped by storage dtype (the model's precision mix)."""

    dtype: str
    parameters: int
    parameter_bytes: int


class OpFlops(BaseModel):
    """FLOPs of one forward pass grouped by operator (aten op for torch, op type for ONNX)."""

    op: str
    flops: int
    nodes: int | None = Field(default=None, description="ONNX nodes of this type; None for torch.")


class TransformerStack(BaseModel):
    """A stack of repeated transformer blocks and its shape."""

    path: str = Field(description="Module path (torch) or initializer-name prefix (ONNX) of the block list.")
    component: str | None = Field(default=None, description="Component that holds the stack.")
    role: ComponentRole = "other"
    blocks: int
    block_type: str | None = None
    hidden_size: int | None = None
    attention_heads: int | None = Field(
        default=None, description="From module attributes, config or q/k shapes."
    )
    kv_heads: int | None = Field(
        default=None, description="Key/value heads when fewer than query heads (GQA)."
    )
    mlp_width: int | None = Field(default=None, description="Inner width of the block's feed-forward layers.")


class ConvBackbone(BaseModel):
    """Convolutional layers of one component: how many, their channels and their downsampling stages."""

    component: str | None = None
    role: ComponentRole = "other"
    conv_layers: int
    channels: list[int] = Field(description="Distinct output channel counts, in definition order.")
    downsampling_layers: int = Field(description="Convolutions with a stride above 1.")
    stages: int = Field(description="Resolution stages: downsampling_layers + 1.")


class ArchitecturePattern(BaseModel):
    """The detected architecture: transformer stacks, conv backbones, normalizations, VLA or not."""

    kind: ArchitectureKind
    is_vla: bool = Field(description="Vision + language + action output (a head, or action tokens).")
    action_output: Literal["head", "tokens"] | None = Field(
        default=None, description="How a VLA emits actions: a dedicated head, or language tokens (OpenVLA)."
    )
    transformer_stacks: list[TransformerStack] = Field(default_factory=list)
    conv_backbones: list[ConvBackbone] = Field(default_factory=list)
    normalization: list[str] = Field(default_factory=list, description="Normalization layer types present.")
    summary: str = Field(description="One line, e.g. 'VLA: vision tower (ViT, 2 blocks) + ...'.")


class ModelProfile(BaseModel):
    """Everything robopt knows about a model before optimizing it: size, parameters, FLOPs, shape, speed."""

    schema_version: int = 1
    format: ModelFormat
    runtime: Runtime
    source: Path = Field(description="What the user gave.")
    path: Path = Field(description="The deployable artifact that was profiled.")
    file_size_bytes: int | None = Field(
        default=None,
        description="Bytes of the artifact on disk: the file (with ONNX external data) or the directory.",
    )
    parameters: int = Field(description="Parameter elements, tied parameters counted once.")
    parameter_bytes: int
    buffer_bytes: int = Field(
        default=0,
        description="Tensors that are not parameters: torch buffers (norm statistics, masks), ONNX integer "
        "initializers (shape and index constants).",
    )
    tied_parameters: list[str] = Field(
        default_factory=list, description="Names of parameters that alias an earlier one (not counted again)."
    )
    components: list[ComponentProfile] = Field(default_factory=list)
    layer_types: list[LayerTypeProfile] = Field(default_factory=list)
    dtypes: list[DtypeProfile] = Field(default_factory=list)
    flops: int | None = Field(
        default=None, description="FLOPs of one batch-1 forward pass; see flops_convention."
    )
    flops_convention: str = FLOPS_CONVENTION
    flops_by_op: list[OpFlops] = Field(default_factory=list)
    flops_uncounted: list[str] = Field(
        default_factory=list,
        description="Heavy ops seen whose FLOPs could not be counted (so flops is a floor).",
    )
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list, description="From a real forward pass.")
    architecture: ArchitecturePattern
    latency: LatencyResult | None = Field(
        default=None, description="Measured latency; None when not measured."
    )
    warnings: list[str] = Field(default_factory=list, description="What could not be profiled, and why.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def latency_p50_ms(self) -> float | None:
        """Median batch-1 latency in ms, when measured."""
        return self.latency.p50_ms if self.latency else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def latency_p95_ms(self) -> float | None:
        """95th percentile batch-1 latency in ms, when measured."""
        return self.latency.p95_ms if self.latency else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def peak_memory_mb(self) -> float | None:
        """Peak resident memory of the measuring process in MB, when measured."""
        return self.latency.peak_rss_mb if self.latency else None
