"""ONNX precision cast: store an ONNX graph's float weights and compute in FP16.

The PyTorch FP16/BF16 cast lives in `tools.quantization.torch_cast`; this module only rewrites ONNX graphs,
with ONNX Runtime's `convert_float_to_float16` (Cast nodes around the ops it keeps in float32).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tools.compression.onnx_export import onnx_source_path, robopt_metadata, set_robopt_metadata
from tools.inputs import InputSpec
from tools.quantization.ort_int8 import resolve_excluded_nodes, weight_coverage
from tools.techniques.artifacts import ONNX_OR_TORCH_INPUTS, save_onnx_model
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register


class OnnxFp16Config(TechniqueConfig):
    """Convert an ONNX graph's float32 weights and ops to float16, keeping listed ops and nodes in float32."""

    type: Literal["onnx_fp16"] = "onnx_fp16"
    keep_io_types: bool = Field(
        default=True,
        description="Keep float32 graph inputs and outputs (Cast at the edges), so callers feed the same arrays.",
    )
    op_block_list: tuple[str, ...] = Field(
        default=(),
        description="Op types kept in float32, in addition to ONNX Runtime's default list (e.g. 'Softmax').",
        json_schema_extra={"search": [[], ["Softmax", "LayerNormalization"]]},
    )
    nodes_to_exclude: tuple[str, ...] = Field(
        default=(), description="ONNX node names or module paths (e.g. 'action_head.mlp.6') kept in float32."
    )


def sort_topologically(graph: Any) -> None:
    """Reorder `graph.node` so every node follows its producers (the float16 converter appends edge Casts)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:  # a cycle or an input produced outside the graph: keep the rest as it is
            ordered.extend(pending)
            break
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def convert_to_fp16(model: Any, config: OnnxFp16Config, blocked_nodes: list[str] | None = None) -> Any:
    """ONNX Runtime's float16 conversion of `model` with the config's blocked ops, topologically sorted."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    converted = convert_float_to_float16(
        model,
        keep_io_types=config.keep_io_types,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list)),
        node_block_list=list(blocked_nodes or []),
    )
    sort_topologically(converted.graph)
    return converted


def _fp16_specs(specs: list[InputSpec]) -> list[InputSpec]:
    """Input specs of a graph whose float32 inputs became float16."""
    return [s.model_copy(update={"dtype": "float16"}) if s.dtype == "float32" else s for s in specs]


@register(
    OnnxFp16Config,
    TechniqueSpec(
        name="onnx_fp16",
        family=Family.QUANTIZATION,
        summary="Cast an ONNX graph to FP16 (weights and compute) with ONNX Runtime's float16 converter, "
        "keeping float32 I/O and sensitive ops.",
        needs=Needs(packages=("onnx", "onnxruntime"), install_hint="pip install onnx onnxruntime"),
        input_formats=ONNX_OR_TORCH_INPUTS,
        output_format="onnx",
        runtimes=("onnxruntime-cuda", "tensorrt", "onnxruntime-cpu"),
        precision="fp16",
        expected_effect="Measured on the reference VLA: 50% of the FP32 ONNX size, action cosine 0.99999996; "
        "no faster on ORT CPU (2.0 vs 1.9 ms at batch 1): the speed-up needs a GPU with FP16 kernels.",
    ),
)
def _apply_onnx_fp16(ctx: TechniqueContext, config: OnnxFp16Config) -> TechniqueProduct:
    """Convert float tensors to float16 except the blocked ops and nodes, and store the graph."""
    import onnx

    ctx.progress(25, "onnx_fp16: getting the ONNX graph")
    source, facts = onnx_source_path(ctx, config.type)
    model = onnx.load(str(source))
    metadata = robopt_metadata(model)
    blocked_nodes = resolve_excluded_nodes(model, config.nodes_to_exclude)
    before = onnx.load(str(source))
    ctx.progress(50, f"onnx_fp16: converting ({len(blocked_nodes)} nodes kept in float32)")
    converted = convert_to_fp16(model, config, blocked_nodes)
    set_robopt_metadata(
        converted, {**metadata, "technique": config.type, "source_version": ctx.source_version}
    )
    ctx.progress(75, "onnx_fp16: storing the FP16 graph")
    output = ctx.work_dir / "fp16.onnx"
    onnx.save(converted, str(output))
    coverage = weight_coverage(before, converted, kept_types=(1,))
    specs = ctx.source.input_specs if config.keep_io_types else _fp16_specs(ctx.source.input_specs)
    facts.update(
        {
            "excluded_nodes": blocked_nodes,
            "keep_io_types": config.keep_io_types,
            "fp16_weight_nodes": coverage["quantized_nodes"],
            "float32_weight_nodes": coverage["float_weight_nodes"],
            "weight_fraction_fp16": coverage["weight_fraction_quantized"],
            "source_onnx_bytes": source.stat().st_size,
            "onnx_bytes": output.stat().st_size,
            "size_ratio_vs_source_onnx": output.stat().st_size / source.stat().st_size,
        }
    )
    path, fmt, options = save_onnx_model(output, ctx.work_dir, specs)
    return TechniqueProduct(path, fmt, options, facts)
