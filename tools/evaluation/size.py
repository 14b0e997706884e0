"""Size of a deployable model: bytes of its artifact and its stored weights by precision.

`measure_size(path, options)` reads an ONNX graph's initializers without loading external data, or loads a
torch artifact through intake; `size_of_module` and `size_of_onnx` work on what is already at hand.
Quantized storage is counted as stored: torch.ao packed int8 weights, torchao tensor subclasses (their int8
`qdata` and float scales), bitsandbytes 4-bit weights (as nf4/fp4, with their logical element count) and
ONNX `MatMulNBits` weights (as int4).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, computed_field

from tools.errors import MeasurementError, ValidationError
from tools.intake.types import LoadedModel, LoadOptions
from tools.log import get_logger
from tools.profiling.common import artifact_size, dtype_name

log = get_logger("evaluation")

_MB = 1024 * 1024

Precision = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]
"""Compute/storage precisions that targets state support for; `normalize_precision` maps dtype names here."""

_PRECISION_ALIASES: dict[str, Precision] = {
    "float64": "fp64",
    "double": "fp64",
    "fp64": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
    "tf32": "tf32",
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "fp8": "fp8",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "float8e4m3fn": "fp8",
    "float8e5m2": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "int8": "int8",
    "uint8": "int8",
    "qint8": "int8",
    "quint8": "int8",
    "w8a8": "int8",
    "int4": "int4",
    "uint4": "int4",
    "nf4": "int4",
    "fp4": "int4",
    "w4a16": "int4",
}

BYTES_PER_ELEMENT: dict[Precision, float] = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "fp16": 2,
    "bf16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}

# Dtypes that hold weights; int32/int64/bool tensors are indices, shapes and counters, not parameters.
_WEIGHT_DTYPES = {
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int8",
    "uint8",
    "int4",
    "uint4",
    "nf4",
    "fp4",
}
_TORCH_QUANTIZED = {"qint8": "int8", "quint8": "uint8", "qint32": "int32", "quint4x2": "uint4"}
_ONNX_NAMES = {
    "float": "float32",
    "double": "float64",
    "float8e4m3fn": "float8_e4m3fn",
    "float8e5m2": "float8_e5m2",
}
_ONNX_SUBBYTE = {"int4": 0.5, "uint4": 0.5, "float4e2m1": 0.5}


def normalize_precision(name: str) -> Precision:
    """Map a dtype or precision name ('float16', 'bf16', 'qint8', 'nf4', ...) to a Precision."""
    key = name.strip().lower().removeprefix("torch.")
    if key not in _PRECISION_ALIASES:
        known = ", ".join(sorted(set(_PRECISION_ALIASES.values())))
        raise ValidationError(f"unknown precision {name!r}", hint=f"use one of: {known}")
    return _PRECISION_ALIASES[key]


class DtypeCount(BaseModel):
    """Stored elements and bytes of one dtype."""

    model_config = ConfigDict(frozen=True)

    count: int = Field(ge=0, description="Logical elements (a packed 4-bit byte holds two).")
    bytes: int = Field(ge=0, description="Bytes these elements occupy in memory.")


class SizeFigures(BaseModel):
    """Artifact bytes on disk and the weights held in memory, by storage dtype."""

    model_config = ConfigDict(frozen=True)

    artifact_bytes: int | None = Field(
        description="Bytes of the deployable artifact: the file (with ONNX external data) or the directory."
    )
    params_by_dtype: dict[str, DtypeCount] = Field(
        description="Every stored weight-like tensor (parameters, buffers, packed quantized weights and "
        "their scales) by storage dtype; int32/int64/bool index and shape tensors are left out."
    )
    total_params: int = Field(ge=0, description="Sum of the counts in params_by_dtype.")
    weight_bytes: int = Field(ge=0, description="Sum of the bytes in params_by_dtype: what inference reads.")
    source: Literal["torch", "onnx"] = Field(description="Where the tensors were read from.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def artifact_mb(self) -> float | None:
        """Artifact size in MiB."""
        return None if self.artifact_bytes is None else self.artifact_bytes / _MB

    @computed_field  # type: ignore[prop-decorator]
    @property
    def weight_mb(self) -> float:
        """Weights in memory in MiB."""
        return self.weight_bytes / _MB

    def dominant_precision(self) -> Precision:
        """Return the precision holding most of the weight bytes (fp32 when there are none)."""
        if not self.params_by_dtype:
            return "fp32"
        dtype = max(self.params_by_dtype, key=lambda d: (self.params_by_dtype[d].bytes, d))
        return normalize_precision(dtype)


def _figures(
    entries: Iterable[tuple[str, int, int]], artifact_bytes: int | None, source: Literal["torch", "onnx"]
) -> SizeFigures:
    """Sum (dtype, count, bytes) entries into SizeFigures, keeping only weight-like dtypes."""
    totals: dict[str, list[int]] = {}
    for dtype, count, nbytes in entries:
        if dtype in _WEIGHT_DTYPES:
            entry = totals.setdefault(dtype, [0, 0])
            entry[0] += count
            entry[1] += nbytes
    ordered = sorted(totals.items(), key=lambda item: (-item[1][1], item[0]))
    by_dtype = {dtype: DtypeCount(count=c, bytes=b) for dtype, (c, b) in ordered}
    return SizeFigures(
        artifact_bytes=artifact_bytes,
        params_by_dtype=by_dtype,
        total_params=sum(v.count for v in by_dtype.values()),
        weight_bytes=sum(v.bytes for v in by_dtype.values()),
        source=source,
    )


# --- torch -----------------------------------------------------------------------------------------------


def size_of_module(module: torch.nn.Module, artifact_bytes: int | None = None) -> SizeFigures:
    """Count a torch module's stored weights by dtype: parameters, buffers and quantized packed weights."""
    return _figures(_module_entries(module), artifact_bytes, "torch")


def _module_entries(module: torch.nn.Module) -> Iterator[tuple[str, int, int]]:
    """Yield (dtype, count, bytes) once per distinct stored tensor of the module (tied weights once)."""
    seen: set[tuple[Any, ...]] = set()
    tensors: list[torch.Tensor] = [p for _, p in module.named_parameters(remove_duplicate=False)]
    tensors += [b for _, b in module.named_buffers(remove_duplicate=False)]
    for sub in module.modules():
        # torch.ao quantized layers keep packed weights that are neither parameters nor buffers
        if type(sub).__module__.startswith("torch.ao.nn.quantized"):
            for attr in ("weight", "bias"):
                getter = getattr(sub, attr, None)
                tensor = getter() if callable(getter) else None
                if isinstance(tensor, torch.Tensor):
                    tensors.append(tensor)
    for tensor in tensors:
        key = _tensor_key(tensor)
        if key in seen:
            continue
        seen.add(key)
        yield from _tensor_entries(tensor, seen)


def _tensor_entries(tensor: torch.Tensor, seen: set[tuple[Any, ...]]) -> Iterator[tuple[str, int, int]]:
    """Yield the storage of one tensor: plain, quantized, bitsandbytes 4-bit, or a tensor subclass."""
    state = getattr(tensor, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:  # bitsandbytes Params4bit
        kind = str(getattr(state, "quant_type", "int4"))
        yield kind if kind in ("nf4", "fp4") else "int4", math.prod(state.shape), _nbytes(tensor)
        for attr in ("absmax", "code"):
            extra = getattr(state, attr, None)
            if isinstance(extra, torch.Tensor) and _tensor_key(extra) not in seen:
                seen.add(_tensor_key(extra))
                yield dtype_name(extra.dtype), extra.numel(), _nbytes(extra)
        return
    plain = type(tensor) in (torch.Tensor, torch.nn.Parameter) or tensor.is_quantized
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if not plain and callable(flatten):  # torchao and other wrapper subclasses: count their inner tensors
        names, _ = flatten()
        for name in names:
            inner = getattr(tensor, name, None)
            if isinstance(inner, torch.Tensor) and _tensor_key(inner) not in seen:
                seen.add(_tensor_key(inner))
                yield from _tensor_entries(inner, seen)
        return
    if tensor.is_quantized:
        name = _TORCH_QUANTIZED.get(dtype_name(tensor.dtype), dtype_name(tensor.dtype))
        yield name, tensor.numel(), tensor.numel() * tensor.element_size()
        return
    yield dtype_name(tensor.dtype), tensor.numel(), _nbytes(tensor)


def _nbytes(tensor: torch.Tensor) -> int:
    """Bytes of a plain tensor's elements."""
    return tensor.numel() * tensor.element_size()


def _tensor_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Identify a tensor's memory so that tied weights held by different objects count once."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.is_quantized:
        return ("id", id(tensor))
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return ("id", id(tensor))
    if pointer == 0 or tensor.device.type == "meta":
        return ("id", id(tensor))
    return ("ptr", tensor.device.type, pointer, tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


# --- ONNX ------------------------------------------------------------------------------------------------


def size_of_onnx(path: Path) -> SizeFigures:
    """Count an ONNX model's initializers and Constant tensors by data type, without loading external data."""
    import onnx

    path = Path(path)
    model_file = _single_onnx(path)
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others
        raise MeasurementError(f"cannot read ONNX graph {model_file.name}: {exc}") from None
    graph = model.graph
    nbits = _matmulnbits_weights(graph)
    entries: list[tuple[str, int, int]] = []
    external: list[Path] = []
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    for tensor in tensors:
        name = _onnx_dtype(tensor.data_type)
        count = math.prod(tensor.dims)
        nbytes = math.ceil(count * _onnx_itemsize(tensor.data_type))
        if tensor.name in nbits:  # packed 4-bit weights: uint8 storage, K*N logical elements
            count = nbits[tensor.name]
            name = "int4"
        for item in tensor.external_data:
            if item.key == "location":
                external.append(model_file.parent / item.value)
        entries.append((name, count, nbytes))
    artifact = artifact_size(path, external) if path.is_file() else artifact_size(path)
    return _figures(entries, artifact, "onnx")


def _single_onnx(path: Path) -> Path:
    """Return the ONNX file itself, or the single .onnx file inside a directory."""
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.onnx")) if path.is_dir() else []
    if len(candidates) != 1:
        raise MeasurementError(f"cannot find the single .onnx file in {path} ({len(candidates)} found)")
    return candidates[0]


def _matmulnbits_weights(graph: Any) -> dict[str, int]:
    """Map each packed MatMulNBits weight initializer to its logical element count K*N (4-bit only)."""
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 2:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if attrs.get("bits", 4) == 4 and "K" in attrs and "N" in attrs:
            found[node.input[1]] = attrs["K"] * attrs["N"]
    return found


def _onnx_dtype(data_type: int) -> str:
    """Render an ONNX TensorProto data type as a torch-style dtype name."""
    import onnx

    name = onnx.TensorProto.DataType.Name(data_type).lower()
    return _ONNX_NAMES.get(name, name)


def _onnx_itemsize(data_type: int) -> float:
    """Bytes per element of an ONNX data type (0.5 for 4-bit types)."""
    import onnx

    name = onnx.TensorProto.DataType.Name(data_type).lower()
    if name in _ONNX_SUBBYTE:
        return _ONNX_SUBBYTE[name]
    if name == "bfloat16":
        return 2
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 1


# --- entry points ----------------------------------------------------------------------------------------


def size_of_loaded(model: LoadedModel) -> SizeFigures:
    """Size a model already loaded by intake: its module's tensors, or its ONNX file's initializers."""
    if model.module is not None:
        return size_of_module(model.module, artifact_size(model.path))
    if model.session is not None:
        return size_of_onnx(model.path)
    raise MeasurementError("the loaded model has neither a torch module nor an ONNX Runtime session")


def measure_size(path: Path, options: LoadOptions | None = None, data_dir: Path | None = None) -> SizeFigures:
    """Size the artifact at `path`: ONNX graphs are read directly, torch artifacts loaded through intake."""
    from tools.intake import detect_format, load_model
    from tools.intake.types import ModelFormat

    path = Path(path)
    detection = detect_format(path)
    if detection.format == ModelFormat.ONNX:
        return size_of_onnx(path)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="robopt-size-") as scratch:
        loaded = load_model(path, options or LoadOptions(), data_dir or Path(scratch))
        figures = size_of_loaded(loaded)
    log.info(
        "size measured",
        extra={
            "source": str(path),
            "artifact_bytes": figures.artifact_bytes,
            "weights": figures.weight_bytes,
        },
    )
    return figures.model_copy(update={"artifact_bytes": artifact_size(path)})
