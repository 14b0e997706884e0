"""Profile an ONNX graph: initializers by component, consuming op and dtype; FLOPs from inferred shapes.

FLOPs use torch's convention (2 per multiply-accumulate of MatMul/Gemm/Conv/attention, elementwise ops not
counted), so a torch model and its ONNX export report the same figure. Shapes come from
`onnx.shape_inference.infer_shapes` after the graph's inputs are pinned to the model's input specs.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
from onnx import TensorProto

from tools.inputs import InputSpec
from tools.log import get_logger
from tools.profiling.common import WeightRecord, conv_backbones
from tools.profiling.components import ComponentIndex, split_components, tokens, tree_from_paths
from tools.profiling.schema import ConvBackbone, OpFlops, TransformerStack

log = get_logger("profiling")

_DTYPES: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float32", 32), TensorProto.FLOAT16: ("float16", 16),
    TensorProto.BFLOAT16: ("bfloat16", 16), TensorProto.DOUBLE: ("float64", 64),
    TensorProto.INT8: ("int8", 8), TensorProto.UINT8: ("uint8", 8), TensorProto.INT16: ("int16", 16),
    TensorProto.UINT16: ("uint16", 16), TensorProto.INT32: ("int32", 32), TensorProto.UINT32: ("uint32", 32),
    TensorProto.INT64: ("int64", 64), TensorProto.UINT64: ("uint64", 64), TensorProto.BOOL: ("bool", 8),
}  # fmt: skip
for _name, _bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8),
                     ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8)):  # fmt: skip
    if hasattr(TensorProto, _name):
        _DTYPES[getattr(TensorProto, _name)] = (_name.lower(), _bits)
# Integer initializers of these types are shape, axis and index constants, never weights; together with scalar
# initializers they are reported as buffer bytes, not parameters (a learned scalar would be miscounted there).
_CONSTANT_DTYPES = {"int16", "uint16", "int32", "uint32", "int64", "uint64", "bool", "string"}
_PASS_THROUGH = {"Cast", "CastLike", "DequantizeLinear", "QuantizeLinear", "Transpose", "Reshape", "Identity",
                 "Squeeze", "Unsqueeze", "Flatten"}  # fmt: skip
_MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"}
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_NORM_OPS = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
             "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "LpNormalization"}  # fmt: skip
_ATTENTION_WORDS = {
    "attn",
    "attention",
    "qkv",
    "q",
    "k",
    "v",
    "query",
    "key",
    "value",
    "wq",
    "wk",
    "wv",
    "wo",
    "o",
}
_STACK_RE = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")

Shape = list[int]


@dataclass
class OnnxGraphProfile:
    """What the graph alone tells: weights, FLOPs, structure, with names mapped onto components."""

    records: list[WeightRecord]
    constant_bytes: int
    index: ComponentIndex
    flops: int | None
    flops_by_op: list[OpFlops]
    flops_by_component: dict[str, int]
    uncounted: list[str]
    stacks: list[TransformerStack]
    convs: list[ConvBackbone]
    linear_layers: dict[str, int]
    normalization: list[str]
    external_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def onnx_file(path: Path) -> Path:
    """Return the .onnx file of a model path (the file itself, or the single .onnx file in a directory)."""
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if len(candidates) == 1:
            return candidates[0]
    return path


def profile_graph(path: Path, specs: list[InputSpec], config: dict[str, Any]) -> OnnxGraphProfile:
    """Read the graph at `path` (without loading external weights) and profile it for the given inputs."""
    path = onnx_file(path)
    proto = onnx.load(str(path), load_external_data=False)
    warnings: list[str] = []
    if proto.functions:
        try:
            from onnx import inliner

            proto = inliner.inline_local_functions(proto)
        except Exception as exc:  # noqa: BLE001 - an older onnx or odd functions: count the main graph
            warnings.append(f"could not inline local functions ({exc}); ops inside them are not counted")
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node

    source = _InitializerSource(inits, producers)
    scopes = {id(node): _node_scope(node, source) for node in graph.node}
    records, constant_bytes = _weight_records(inits, consumers, scopes)
    tree = tree_from_paths((r.name.rpartition(".")[0], None, {r.layer_type}) for r in records)
    index = ComponentIndex(*split_components(tree))
    shape = _infer_shapes(proto, specs, warnings)

    by_op: dict[str, list[int]] = {}
    by_component: Counter[str] = Counter()
    uncounted: list[str] = []
    counted_any = False
    for node in graph.node:
        if node.op_type not in _MATMUL_OPS | _CONV_OPS | {"Einsum", "Attention", "MultiHeadAttention"}:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                uncounted.append(f"{node.op_type} {node.name} (subgraph not counted)")
            continue
        flops = _node_flops(node, shape) if shape is not None else None
        if flops is None:
            uncounted.append(f"{node.op_type} {node.name or node.output[0]}")
            continue
        counted_any = True
        entry = by_op.setdefault(node.op_type, [0, 0])
        entry[0] += flops
        entry[1] += 1
        by_component[index.component_of(scopes[id(node)] + ".op")] += flops
    total = (
        sum(v[0] for v in by_op.values()) if (counted_any or not uncounted) and shape is not None else None
    )
    return OnnxGraphProfile(
        records=records,
        constant_bytes=constant_bytes,
        index=index,
        flops=total,
        flops_by_op=sorted(
            (OpFlops(op=k, flops=v[0], nodes=v[1]) for k, v in by_op.items()), key=lambda o: -o.flops
        ),
        flops_by_component=dict(by_component),
        uncounted=uncounted,
        stacks=_stacks_from_names(records, index, config),
        convs=_convs(graph, source, index, scopes),
        linear_layers=_linear_layers(graph, source, index, scopes),
        normalization=sorted({n.op_type for n in graph.node if n.op_type in _NORM_OPS}),
        external_files=_external_files(path, inits.values()),
        warnings=warnings,
    )


def _weight_records(
    inits: dict[str, TensorProto], consumers: dict[str, list[onnx.NodeProto]], scopes: dict[int, str]
) -> tuple[list[WeightRecord], int]:
    """One record per weight initializer, named by its torch path: its own name, or its consumer's scope.

    Exporters rename weights they transpose or fold (`val_7`, `onnx::MatMul_12`); the consuming node's module
    scope puts them back in the right component.
    """
    records: list[WeightRecord] = []
    constant_bytes = 0
    for name, tensor in inits.items():
        dtype, bits = _DTYPES.get(tensor.data_type, (TensorProto.DataType.Name(tensor.data_type).lower(), 0))
        numel = math.prod(tensor.dims)
        nbytes = (numel * bits + 7) // 8
        if dtype in _CONSTANT_DTYPES or numel <= 1:  # scalars are exporter constants (scales, epsilons)
            constant_bytes += nbytes
            continue
        layer_type, node = _consumer(name, consumers)
        logical = name
        if not _is_module_path(name) and node is not None and scopes.get(id(node)):
            logical = f"{scopes[id(node)]}.{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        owner = (node.name or node.output[0]) if node is not None else name
        records.append(WeightRecord(logical, numel, nbytes, dtype, layer_type, owner, tuple(tensor.dims)))
    return records, constant_bytes


def _is_module_path(name: str) -> bool:
    return "." in name and "::" not in name and "/" not in name and not name.startswith("val_")


def _consumer(
    name: str, consumers: dict[str, list[onnx.NodeProto]], depth: int = 0
) -> tuple[str, onnx.NodeProto | None]:
    """Return the op type and node that use a tensor, looking through casts, transposes, dequantizes."""
    uses = consumers.get(name, [])
    if not uses:
        return "(unused)", None
    node = uses[0]
    if node.op_type in _PASS_THROUGH and node.output and depth < 4 and node.output[0] in consumers:
        return _consumer(node.output[0], consumers, depth + 1)
    return node.op_type, node


class _InitializerSource:
    """Find the initializer behind a tensor, looking back through casts, transposes and dequantizes."""

    def __init__(self, inits: dict[str, TensorProto], producers: dict[str, onnx.NodeProto]) -> None:
        self.inits, self.producers = inits, producers

    def __call__(self, name: str, depth: int = 0) -> TensorProto | None:
        if name in self.inits:
            return self.inits[name]
        node = self.producers.get(name)
        if node is not None and node.op_type in _PASS_THROUGH and node.input and depth < 4:
            return self(node.input[0], depth + 1)
        return None


def _infer_shapes(
    proto: onnx.ModelProto, specs: list[InputSpec], warnings: list[str]
) -> Callable[[str], Shape | None] | None:
    """Pin graph inputs to the spec shapes, infer all shapes, and return a lookup (None: unknown)."""
    by_name = {s.name: s for s in specs}
    for value in proto.graph.input:
        spec = by_name.get(value.name)
        if spec is None or not value.type.HasField("tensor_type"):
            continue
        shape = value.type.tensor_type.shape
        while len(shape.dim) < len(spec.shape):
            shape.dim.add()
        if len(shape.dim) == len(spec.shape):
            for dim, size in zip(shape.dim, spec.shape):
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:  # noqa: BLE001 - onnx raises several types on graphs it cannot infer
        warnings.append(
            f"ONNX shape inference failed ({type(exc).__name__}: {str(exc)[:200]}); FLOPs unknown"
        )
        return None
    shapes: dict[str, Shape | None] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            known = all(d.HasField("dim_value") for d in dims)
            shapes[value.name] = [d.dim_value for d in dims] if known else None
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes.get


def _node_flops(node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> int | None:
    """FLOPs of one node from its input and output shapes, or None when a shape is unknown."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op, ins = node.op_type, list(node.input)

    def dims(i: int) -> Shape | None:
        return shape(ins[i]) if i < len(ins) and ins[i] else None

    out = shape(node.output[0]) if node.output else None
    if op in {"MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul"}:
        a, b = (dims(0), dims(3)) if op == "QLinearMatMul" else (dims(0), dims(1))
        if a is None or b is None or out is None:
            return None
        k = a[-2] if op == "FusedMatMul" and attrs.get("transA") else a[-1]
        return 2 * math.prod(out) * k
    if op == "MatMulNBits":
        a = dims(0)
        return (
            2 * math.prod(a[:-1]) * int(attrs["N"]) * int(attrs["K"])
            if a is not None and "N" in attrs
            else None
        )
    if op == "Gemm":
        a, b = dims(0), dims(1)
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * m * n * k
    if op in {"Conv", "ConvInteger", "QLinearConv"}:
        w = dims(3) if op == "QLinearConv" else dims(1)
        return 2 * math.prod(out) * math.prod(w[1:]) if out is not None and w is not None else None
    if op == "ConvTranspose":
        x, w = dims(0), dims(1)
        return 2 * math.prod(x) * math.prod(w[1:]) if x is not None and w is not None else None
    if op == "Einsum":
        return _einsum_flops(str(attrs.get("equation", b"")), [dims(i) for i in range(len(ins))])
    if op in {"Attention", "MultiHeadAttention"}:
        return _attention_flops(node, attrs, dims)
    return None


def _einsum_flops(equation: str, shapes: list[Shape | None]) -> int | None:
    """FLOPs of an Einsum that contracts an index: 2 x the product of every index size."""
    equation = equation.replace(" ", "")
    if "->" not in equation or "..." in equation or any(s is None for s in shapes):
        return None
    lhs, rhs = equation.split("->")
    sizes: dict[str, int] = {}
    for term, dims in zip(lhs.split(","), shapes):
        if dims is None or len(term) != len(dims):
            return None
        sizes.update(zip(term, dims))
    contracted = set(sizes) - set(rhs)
    return 2 * math.prod(sizes.values()) if contracted else 0


def _attention_flops(
    node: onnx.NodeProto, attrs: dict[str, Any], dims: Callable[[int], Shape | None]
) -> int | None:
    """QK^T and attention-times-V products of an ONNX (opset 23) or com.microsoft attention node."""
    q, k, v = dims(0), dims(1), dims(2)
    if q is None or k is None:
        return None
    if node.op_type == "Attention" and node.domain in ("", "ai.onnx") and len(q) == 4:
        b, h, sq, d = q
        sk, dv = k[2], (v[3] if v is not None and len(v) == 4 else d)
        return 2 * b * h * sq * sk * d + 2 * b * h * sq * sk * dv
    if len(q) == 3 and len(k) == 3:  # (batch, seq, hidden): heads cancel out of the count
        b, sq, hidden = q
        sk = k[1]
        if node.op_type == "Attention" and node.domain == "com.microsoft":
            return None  # fused QKV projection with packed weights: rare, left uncounted rather than guessed
        return 4 * b * sq * sk * hidden
    return None


def _node_scope(node: onnx.NodeProto, source: _InitializerSource) -> str:
    """Module path that produced a node: torch exporter metadata, a '/a/a.b/Op' name, or its weight's name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2:
                return str(scopes[-2])
    if node.name.startswith("/"):  # TorchScript exporter: '/vision_tower/blocks.0/attn/MatMul'
        path = ""
        for part in node.name.strip("/").split("/")[:-1]:
            parent, _, last = path.rpartition(".")
            if path and part.startswith(last + "."):  # '/encoder/encoder.0/Gemm': the part repeats its parent
                path = f"{parent}.{part}" if parent else part
            else:
                path = f"{path}.{part}" if path else part
        return path
    for name in node.input:
        tensor = source(name) if name else None
        if tensor is not None and len(tensor.dims) >= 2:
            return tensor.name.rpartition(".")[0]
    return ""


def _stacks_from_names(
    records: list[WeightRecord], index: ComponentIndex, config: dict[str, Any]
) -> list[TransformerStack]:
    """Find repeated blocks from weight paths (`....layers.3.self_attn.q_proj.weight`) that hold attention."""
    groups: dict[str, dict[int, list[tuple[str, list[int]]]]] = {}
    for record in records:
        match = _STACK_RE.match(record.name)
        if match:
            entry = (match["rest"], list(record.shape))
            groups.setdefault(match["prefix"], {}).setdefault(int(match["index"]), []).append(entry)
    stacks: list[TransformerStack] = []
    for prefix in sorted(groups, key=len):  # outer stacks first, so that nested repeats are skipped
        blocks = groups[prefix]
        if any(prefix.startswith(s.path + ".") for s in stacks):
            continue
        rests = blocks[min(blocks)]
        if not any(tokens(rest) & {"attn", "attention", "qkv"} for rest, _ in rests):
            continue
        norms = [d for rest, d in rests if len(d) == 1 and tokens(rest) & {"norm", "ln", "layernorm"}]
        hidden = int(norms[0][0]) if norms else None
        widths = [
            max(d) for rest, d in rests if len(d) == 2 and hidden in d and not tokens(rest) & _ATTENTION_WORDS
        ]
        component = index.component_of(f"{prefix}.0.x")
        role = index.role_of(component)
        section = {"vision_tower": "vision_config", "language_backbone": "text_config"}.get(role, "")
        cfg = config.get(section, config) if isinstance(config.get(section), dict) else config
        heads = cfg.get("num_attention_heads") if isinstance(cfg.get("num_attention_heads"), int) else None
        kv_heads = cfg.get("num_key_value_heads") if isinstance(cfg.get("num_key_value_heads"), int) else None
        stacks.append(
            TransformerStack(
                path=prefix,
                component=component,
                role=role,
                blocks=len(blocks),
                hidden_size=hidden,
                attention_heads=heads,
                kv_heads=kv_heads,
                mlp_width=max(widths) if widths else None,
            )
        )
    order = list(groups)  # first appearance in the graph
    return sorted(stacks, key=lambda s: order.index(s.path))


def _convs(
    graph: onnx.GraphProto, source: _InitializerSource, index: ComponentIndex, scopes: dict[int, str]
) -> list[ConvBackbone]:
    """Summarize Conv nodes per component: channels from weights, downsampling from strides."""
    per_component: dict[str, list[tuple[int, int, bool]]] = {}
    for node in graph.node:
        if node.op_type not in _CONV_OPS:
            continue
        weight = source(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
        out = int(weight.dims[1 if node.op_type == "ConvTranspose" else 0]) if weight is not None else 0
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
        component = index.component_of(scopes[id(node)] + ".op")
        per_component.setdefault(component, []).append(
            (out, max(strides or [1]), node.op_type == "ConvTranspose")
        )
    return conv_backbones(per_component, index)


def _linear_layers(
    graph: onnx.GraphProto, source: _InitializerSource, index: ComponentIndex, scopes: dict[int, str]
) -> dict[str, int]:
    """Count MatMul/Gemm nodes that multiply by a weight initializer, per component."""
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in _MATMUL_OPS and any(
            (t := source(name)) is not None and len(t.dims) >= 2 for name in node.input if name
        ):
            counts[index.component_of(scopes[id(node)] + ".op")] += 1
    return dict(counts)


def _external_files(path: Path, tensors: Any) -> list[Path]:
    """List the external data files the initializers point to."""
    files = []
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                files.append(path.parent / location)
    return list(dict.fromkeys(files))
