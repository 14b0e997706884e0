"""ONNX Runtime INT8: dynamic (weights int8, activations quantized at run time) and static QDQ (calibrated).

Both take an ONNX version; a PyTorch version is exported first (`onnx_source_path`, parity-checked, recorded in
the facts). `nodes_to_exclude` is how the planner keeps sensitive layers in float: it takes ONNX node names or
module paths (`action_head.mlp.6`), which the dynamo exporter records on every node it writes.
The helpers here (pre-processing, Gemm rewriting, exclusion, weight coverage) also serve `ort_int4`.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import Field, model_validator

from tools.compression.onnx_export import onnx_source_path, robopt_metadata, set_robopt_metadata
from tools.errors import ValidationError
from tools.log import get_logger
from tools.techniques.artifacts import ONNX_OR_TORCH_INPUTS, save_onnx_model
from tools.techniques.base import (
    CalibrationData,
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register

_log = get_logger("quantization.ort_int8")

WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
FLOAT_TYPES = (1, 10, 11, 16)  # ONNX float32, float16, float64, bfloat16
QuantTypeName = Literal["int8", "uint8"]
DynamicOpType = Literal["MatMul", "Gemm", "Conv", "Gather", "Attention", "LSTM"]
StaticOpType = Literal[
    "MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
    "Reshape", "Transpose", "Concat", "Softmax", "LayerNormalization", "Split", "Resize", "Where",
]  # fmt: skip
_ONNX_INPUT_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}
_ORT_PKGS = Needs(packages=("onnx", "onnxruntime"), install_hint="pip install onnx onnxruntime")

_EXCLUDE_FIELD = Field(
    default=(),
    description="ONNX node names or module paths (e.g. 'action_head.mlp.6') whose nodes stay in float.",
)
_OP_EXCLUDE_FIELD = Field(default=(), description="ONNX op types whose nodes stay in float (e.g. 'Conv').")


class OrtInt8DynamicConfig(TechniqueConfig):
    """Quantize weights of MatMul/Gemm (and optionally Conv, Gather) to INT8; activations at run time."""

    type: Literal["ort_int8_dynamic"] = "ort_int8_dynamic"
    per_channel: bool = Field(
        default=False, description="One scale per output channel instead of per tensor."
    )
    reduce_range: bool = Field(
        default=False, description="7-bit weights: avoids saturation on x86 CPUs without VNNI."
    )
    weight_type: QuantTypeName = Field(default="int8", description="Integer type of the quantized weights.")
    op_types_to_quantize: tuple[DynamicOpType, ...] = Field(
        default=("MatMul", "Gemm"),
        min_length=1,
        description="Op types to quantize; Gemm nodes are rewritten as MatMul+Add first (dynamic INT8 has no "
        "Gemm kernel). ConvInteger is often slower than float Conv on ORT CPU, so Conv is opt-in.",
        json_schema_extra={"search": [["MatMul", "Gemm"], ["MatMul", "Gemm", "Conv"]]},
    )
    nodes_to_exclude: tuple[str, ...] = _EXCLUDE_FIELD
    op_types_to_exclude: tuple[str, ...] = _OP_EXCLUDE_FIELD


class OrtInt8StaticConfig(TechniqueConfig):
    """Quantize weights and activations to INT8 as QDQ pairs, with activation ranges from calibration data."""

    type: Literal["ort_int8_static"] = "ort_int8_static"
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax",
        description="How activation ranges are chosen: observed min/max, ORT's KL-divergence thresholds (with "
        "ORT 1.31's 128-bin histograms this gave exactly the minmax ranges on the reference VLA), or a "
        "percentile of the absolute values.",
        json_schema_extra={"search": ["minmax", "entropy", "percentile"]},
    )
    percentile: float = Field(
        default=99.999, ge=90.0, le=100.0, description="Percentile kept by the 'percentile' method."
    )
    per_channel: bool = Field(default=False, description="One weight scale per output channel.")
    reduce_range: bool = Field(default=False, description="7-bit weights (x86 CPUs without VNNI).")
    activation_type: QuantTypeName = Field(
        default="uint8", description="Activation type; int8 with symmetric_activations for TensorRT."
    )
    weight_type: QuantTypeName = Field(
        default="int8", description="Weight type (int8 activations need int8)."
    )
    symmetric_activations: bool = Field(
        default=False, description="Symmetric activation ranges (zero point 0), as TensorRT requires."
    )
    op_types_to_quantize: tuple[StaticOpType, ...] = Field(
        default=(), description="Op types to quantize; empty means every type ORT's QDQ quantizer supports."
    )
    nodes_to_exclude: tuple[str, ...] = _EXCLUDE_FIELD
    op_types_to_exclude: tuple[str, ...] = _OP_EXCLUDE_FIELD
    calibration_batches: int = Field(
        default=8, ge=1, le=256, description="Calibration batches fed (entropy/percentile keep histograms)."
    )
    max_batch_rows: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Rows per calibration feed; larger batches are split to save memory.",
    )

    @model_validator(mode="after")
    def _supported_types(self) -> "OrtInt8StaticConfig":
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("activation_type int8 with weight_type uint8 is not supported by ONNX Runtime")
        return self


@contextlib.contextmanager
def quiet_ort_quantization() -> Iterator[None]:
    """Silence ORT quantization's prints and root-logger warnings for the duration of a call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def preprocess_for_quantization(src: Path, dst: Path) -> bool:
    """Run ORT's quant_pre_process (shape inference + basic optimization) into `dst`; copy when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_ort_quantization():
            quant_pre_process(str(src), str(dst))
        return True
    except Exception as exc:  # noqa: BLE001 - symbolic shape inference fails on some graphs; quantize as is
        _log.info("quant_pre_process failed (%s); quantizing the graph as it is", type(exc).__name__)
        shutil.copyfile(src, dst)
        return False


def gemm_to_matmul(model: Any) -> int:
    """Rewrite Gemm nodes with a constant weight as MatMul (+ Add for the bias), keeping name and metadata.

    Dynamic INT8 and MatMulNBits only quantize MatMul; the exporter writes 2-D Linear layers as Gemm.
    Returns the number of rewritten nodes.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in initializers or attrs.get("transA", 0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        weight = weight.T if attrs.get("transB", 0) else weight
        weight = np.ascontiguousarray(weight * np.asarray(attrs.get("alpha", 1.0), weight.dtype))
        weight_name = f"{node.input[1]}_kn"
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        matmul_out = f"{node.output[0]}_matmul" if bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if bias:
            beta = float(attrs.get("beta", 1.0))
            if beta != 1.0 and bias in initializers:
                scaled = numpy_helper.to_array(initializers[bias]) * np.float32(beta)
                bias = f"{bias}_scaled"
                graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), bias))
            add = helper.make_node("Add", [matmul_out, bias], [node.output[0]], name=f"{node.name}_bias")
            add.metadata_props.extend(node.metadata_props)
            nodes.append(add)
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten


def node_scopes(node: Any) -> list[str]:
    """Module paths the torch exporter recorded for a node (outermost first), or []."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(scope) for scope in scopes[:-1] if scope] if isinstance(scopes, list) else []
    return []


def resolve_excluded_nodes(model: Any, names: tuple[str, ...], op_types: tuple[str, ...] = ()) -> list[str]:
    """ONNX node names for `names` (node names or module paths) and `op_types`; unknown names are an error."""
    excluded: dict[str, None] = {}
    unknown = []
    for name in names:
        matched = [
            node.name
            for node in model.graph.node
            if node.name == name or any(s == name or s.startswith(name + ".") for s in node_scopes(node))
        ]
        if not matched:
            unknown.append(name)
        excluded.update(dict.fromkeys(matched))
    if unknown:
        raise ValidationError(
            f"nodes_to_exclude names no node of this graph: {', '.join(unknown)}",
            hint="give ONNX node names or module paths such as 'action_head.mlp.6' (see the profile's layers)",
        )
    excluded.update(dict.fromkeys(node.name for node in model.graph.node if node.op_type in op_types))
    return list(excluded)


def float_weight_nodes(
    model: Any, op_types: tuple[str, ...] = WEIGHT_OPS, float_types: tuple[int, ...] = FLOAT_TYPES
) -> dict[str, str]:
    """Nodes of `op_types` whose weight (input 1) is a float initializer: node name -> weight name.

    A weight read through a Cast (how the float16 converter keeps a blocked node in float32) counts as itself.
    """
    floats = {init.name for init in model.graph.initializer if init.data_type in float_types}
    initializers = {init.name for init in model.graph.initializer}
    casts = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Cast" and n.input[0] in initializers
    }
    found = {}
    for node in model.graph.node:
        if node.op_type in op_types and len(node.input) > 1:
            weight = casts.get(node.input[1], node.input[1])
            if weight in floats:
                found[node.name] = weight
    return found


def weight_coverage(before: Any, after: Any, kept_types: tuple[int, ...] = FLOAT_TYPES) -> dict[str, Any]:
    """Which MatMul/Gemm/Conv weights of `before` are no longer of `kept_types` in `after` (by node and element)."""
    sizes = {init.name: int(np.prod(init.dims)) for init in before.graph.initializer}
    weights = float_weight_nodes(before)
    still_float = set(float_weight_nodes(after, WEIGHT_OPS + ("FusedMatMul",), kept_types).values())
    quantized = {node: w for node, w in weights.items() if w not in still_float}
    total = sum(sizes[w] for w in weights.values())
    return {
        "weight_nodes": len(weights),
        "quantized_nodes": len(quantized),
        "float_weight_nodes": sorted(set(weights) - set(quantized)),
        "weight_fraction_quantized": (sum(sizes[w] for w in quantized.values()) / total) if total else 0.0,
    }


class CalibrationFeeds:
    """An ORT CalibrationDataReader over robopt calibration batches: model inputs only, numpy, small feeds."""

    def __init__(self, model: Any, data: CalibrationData, batches: int, max_rows: int) -> None:
        initializers = {init.name for init in model.graph.initializer}
        self.inputs = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            dims = value.type.tensor_type.shape.dim
            fixed = dims[0].dim_value if dims and dims[0].dim_value > 0 else None
            dtype = _ONNX_INPUT_DTYPES.get(value.type.tensor_type.elem_type, np.float32)
            self.inputs[value.name] = (dtype, fixed)
        missing = [name for name in self.inputs if name not in data.batches[0]]
        if missing:
            raise ValidationError(
                f"calibration batches lack model inputs {', '.join(missing)}",
                hint=f"give arrays for every input: {', '.join(self.inputs)}",
            )
        self.feeds = list(self._feeds(data.batches[:batches], max_rows))
        if not self.feeds:
            raise ValidationError(
                "calibration batches are smaller than the model's fixed batch size",
                hint="give calibration batches with at least as many rows as the model's batch dimension",
            )
        self.rows = sum(next(iter(feed.values())).shape[0] for feed in self.feeds)
        self._position = 0

    def _feeds(self, batches: list[dict[str, Any]], max_rows: int) -> Iterator[dict[str, np.ndarray]]:
        fixed = {f for _, f in self.inputs.values() if f is not None}
        step = min(fixed) if fixed else max_rows
        for batch in batches:
            arrays = {n: batch[n].detach().cpu().numpy().astype(t) for n, (t, _) in self.inputs.items()}
            rows = next(iter(arrays.values())).shape[0]
            for start in range(0, rows - step + 1 if fixed else rows, step):
                yield {name: array[start : start + step] for name, array in arrays.items()}

    def __len__(self) -> int:
        return len(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None when all were given."""
        if self._position >= len(self.feeds):
            return None
        self._position += 1
        return self.feeds[self._position - 1]


@dataclass
class PreparedGraph:
    """The graph handed to a quantizer: loaded, its file, the facts so far, and the source's robopt metadata."""

    model: Any
    path: Path
    facts: dict[str, Any]
    metadata: dict[str, Any]


def quantization_input(ctx: TechniqueContext, technique: str, rewrite_gemm: bool) -> PreparedGraph:
    """Get the source as ONNX (exporting PyTorch), pre-process it, and optionally rewrite Gemm as MatMul."""
    import onnx

    source, facts = onnx_source_path(ctx, technique)
    prepared = ctx.work_dir / "prepared.onnx"
    facts["preprocessed"] = preprocess_for_quantization(source, prepared)
    model = onnx.load(str(prepared))
    facts["gemm_rewritten_as_matmul"] = gemm_to_matmul(model) if rewrite_gemm else 0
    onnx.save(model, str(prepared))
    facts["source_onnx_bytes"] = source.stat().st_size
    metadata = robopt_metadata(onnx.load(str(source), load_external_data=False))
    return PreparedGraph(model, prepared, facts, metadata)


def finish_quantized(
    ctx: TechniqueContext, prepared: PreparedGraph, quantized: Path, technique: str
) -> TechniqueProduct:
    """Embed robopt metadata, add weight coverage and size facts, and store the quantized graph."""
    import onnx

    model = onnx.load(str(quantized))
    metadata = {**prepared.metadata, "technique": technique, "source_version": ctx.source_version}
    set_robopt_metadata(model, metadata)
    onnx.save(model, str(quantized))
    facts = {**prepared.facts, **weight_coverage(prepared.model, model)}
    facts["onnx_bytes"] = quantized.stat().st_size
    facts["size_ratio_vs_source_onnx"] = facts["onnx_bytes"] / facts["source_onnx_bytes"]
    path, fmt, options = save_onnx_model(quantized, ctx.work_dir, ctx.source.input_specs)
    return TechniqueProduct(path, fmt, options, facts)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def quantize_static_qdq(
    source: Path, output: Path, feeds: Any, config: OrtInt8StaticConfig, excluded: list[str] | None = None
) -> Path:
    """Calibrate activation ranges on `feeds` (a CalibrationDataReader) and write `source` as a QDQ graph."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibration_method]
    extra: dict[str, Any] = {"ActivationSymmetric": config.symmetric_activations}
    if config.calibration_method == "percentile":
        extra["CalibPercentile"] = config.percentile
    with quiet_ort_quantization():
        quantize_static(
            str(source),
            str(output),
            feeds,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types_to_quantize) or None,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=_quant_type(config.activation_type),
            weight_type=_quant_type(config.weight_type),
            nodes_to_exclude=list(excluded or []),
            calibrate_method=method,
            extra_options=extra,
        )
    return Path(output)


@register(
    OrtInt8DynamicConfig,
    TechniqueSpec(
        name="ort_int8_dynamic",
        family=Family.QUANTIZATION,
        summary="ONNX Runtime dynamic INT8: MatMul/Gemm weights stored as int8, activations quantized per call; "
        "no calibration data.",
        needs=_ORT_PKGS,
        input_formats=ONNX_OR_TORCH_INPUTS,
        output_format="onnx",
        runtimes=("onnxruntime-cpu",),
        precision="int8",
        expected_effect="Measured on the reference VLA (ORT CPU, 1 thread, batch 1): 27% of the FP32 ONNX size, "
        "2.8x faster (0.68 vs 1.89 ms), action cosine 0.9999 vs FP32; Conv stays float by default (ConvInteger "
        "was 7x slower), so the conv-heavy reference conv_policy only reaches 34% of its size.",
    ),
)
def _apply_ort_int8_dynamic(ctx: TechniqueContext, config: OrtInt8DynamicConfig) -> TechniqueProduct:
    """Pre-process, rewrite Gemm as MatMul, and quantize weights dynamically, leaving excluded nodes float."""
    from onnxruntime.quantization import quantize_dynamic

    ctx.progress(25, "ort_int8_dynamic: preparing the ONNX graph")
    prepared = quantization_input(ctx, config.type, "Gemm" in config.op_types_to_quantize)
    excluded = resolve_excluded_nodes(prepared.model, config.nodes_to_exclude, config.op_types_to_exclude)
    op_types = sorted({"MatMul" if op == "Gemm" else op for op in config.op_types_to_quantize})
    fused = sum(1 for node in prepared.model.graph.node if node.op_type == "Attention")
    if fused and "MatMul" in op_types and "Attention" not in op_types:
        # a fused graph (ort_transformer_fusion) holds the q/k/v projections inside Attention: quantizing
        # MatMuls means quantizing those too, or the attention weights would stay float
        op_types = sorted({*op_types, "Attention"})
        prepared.facts["fused_attention_quantized"] = fused
    ctx.progress(50, f"ort_int8_dynamic: quantizing {', '.join(op_types)} ({len(excluded)} nodes excluded)")
    output = ctx.work_dir / "quantized.onnx"
    with quiet_ort_quantization():
        quantize_dynamic(
            str(prepared.path),
            str(output),
            op_types_to_quantize=op_types,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=_quant_type(config.weight_type),
            nodes_to_exclude=excluded,
        )
    ctx.progress(75, "ort_int8_dynamic: storing the quantized graph")
    prepared.facts.update({"excluded_nodes": excluded, "op_types_quantized": op_types, "mode": "dynamic"})
    return finish_quantized(ctx, prepared, output, config.type)


@register(
    OrtInt8StaticConfig,
    TechniqueSpec(
        name="ort_int8_static",
        family=Family.QUANTIZATION,
        summary="ONNX Runtime static INT8 in QDQ format: weights and activations int8, activation ranges "
        "calibrated (minmax/entropy/percentile); int8 symmetric activations suit TensorRT.",
        needs=Needs(calibration_data=True, packages=_ORT_PKGS.packages, install_hint=_ORT_PKGS.install_hint),
        input_formats=ONNX_OR_TORCH_INPUTS,
        output_format="onnx",
        runtimes=("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"),
        precision="int8",
        expected_effect="Measured on the reference VLA (minmax, ORT CPU, 1 thread, batch 1): 26% of the FP32 "
        "ONNX size, 2.1x faster (0.89 vs 1.89 ms), action cosine 0.997 vs FP32; conv_policy: 26%, 2.0x faster, "
        "cosine 0.995.",
    ),
)
def _apply_ort_int8_static(ctx: TechniqueContext, config: OrtInt8StaticConfig) -> TechniqueProduct:
    """Pre-process, calibrate activation ranges on the calibration data, and write a QDQ graph."""
    calibration = ctx.require_calibration(config.type)
    ctx.progress(25, "ort_int8_static: preparing the ONNX graph")
    prepared = quantization_input(ctx, config.type, rewrite_gemm=False)
    excluded = resolve_excluded_nodes(prepared.model, config.nodes_to_exclude, config.op_types_to_exclude)
    feeds = CalibrationFeeds(prepared.model, calibration, config.calibration_batches, config.max_batch_rows)
    ctx.progress(
        50, f"ort_int8_static: calibrating ({config.calibration_method}) on {len(feeds.feeds)} feeds"
    )
    output = ctx.work_dir / "quantized.onnx"
    quantize_static_qdq(prepared.path, output, feeds, config, excluded)
    ctx.progress(75, "ort_int8_static: storing the QDQ graph")
    prepared.facts.update(
        {
            "excluded_nodes": excluded,
            "mode": "static_qdq",
            "calibration": {
                "method": config.calibration_method,
                "feeds": len(feeds.feeds),
                "rows": feeds.rows,
                "source": calibration.source,
            },
        }
    )
    return finish_quantized(ctx, prepared, output, config.type)
