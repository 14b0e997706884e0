"""Load ONNX models (checker + an ONNX Runtime session) and TensorFlow/Keras models through tf2onnx when present."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from tools.errors import CorruptFileError, MissingDependencyError, ValidationError, first_line
from tools.inputs import InputSpec
from tools.intake.budget import check_within_budget
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat

DEFAULT_DYNAMIC_DIM = 16  # sequence length used for a symbolic non-batch dimension
_ONNX_DTYPES = {
    1: "float32",
    10: "float16",
    16: "bfloat16",
    11: "float64",
    7: "int64",
    6: "int32",
    3: "int8",
    2: "uint8",
    9: "bool",
}


_ITEM_BYTES = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2}
# TensorProto.DataType -> bytes per element (numeric types only; strings have no fixed size)
_TENSOR_ITEM_BYTES = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    14: 8,
    15: 16,
    16: 2,
}


def load_onnx(path: Path, options: LoadOptions) -> LoadedModel:
    """Check the ONNX graph, open a CPU ONNX Runtime session, and derive input specs from the graph."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path.name} is not a valid ONNX model: {first_line(exc)}") from None
    check_declared_sizes(path, model)
    specs = list(options.input_specs) or onnx_input_specs(model)
    for spec in specs:
        check_within_budget(
            path.name,
            f"input {spec.name!r} of shape {list(spec.shape)}",
            math.prod(spec.shape) * _ITEM_BYTES.get(spec.dtype, 8),
            hint="the graph's input shape is forged or wrong; give the real one with --input-spec",
        )
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path.name} is not a valid ONNX model: {first_line(exc)}") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise ValidationError(f"{path.name}: ONNX Runtime cannot open it: {first_line(exc)}") from None
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.ONNX,
        options=options,
        input_specs=specs,
        session=session,
        output_names=[o.name for o in session.get_outputs()],
        metadata={
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            **_recorded_policy(model),
        },
    )


def _recorded_policy(model: object) -> dict[str, object]:
    """{"policy": facts} when robopt exported this graph from a policy (its `robopt.json` metadata says so):
    an exported LeRobot policy keeps its feature keys and observation history for the data given to it."""
    import json

    for prop in getattr(model, "metadata_props", []):
        if prop.key != "robopt.json":
            continue
        try:
            policy = json.loads(prop.value).get("policy")
        except (ValueError, AttributeError):
            return {}
        return {"policy": policy} if isinstance(policy, dict) and policy else {}
    return {}


def check_declared_sizes(path: Path, model: object) -> None:
    """Refuse initializers whose declared size the file cannot hold or memory cannot take, before any load.

    Embedded data must fit in the file; external data must name a file beside the model whose bytes cover the
    declared offset and length; the total must fit the memory budget. Checked before onnx.checker and ONNX
    Runtime, which allocate what the header declares.
    """
    file_bytes = path.stat().st_size
    total = 0
    for tensor in model.graph.initializer:  # type: ignore[attr-defined]
        what = f"initializer {tensor.name!r} of shape {list(tensor.dims)}"
        if any(dim < 0 for dim in tensor.dims):
            raise CorruptFileError(f"{path.name}: {what} has a negative dimension")
        declared = math.prod(tensor.dims) * _TENSOR_ITEM_BYTES.get(tensor.data_type, 1)
        if tensor.data_location == tensor.EXTERNAL:
            _check_external_data(path, tensor, what, declared)
        elif declared > file_bytes and tensor.data_type in _TENSOR_ITEM_BYTES:
            raise CorruptFileError(
                f"{path.name} declares {what} of {declared:,} bytes but the file has {file_bytes:,}",
                hint="the initializer's dims are forged or its data is missing; re-export the model",
            )
        total += declared
    check_within_budget(path.name, "initializers", total)


def _check_external_data(path: Path, tensor: object, what: str, declared: int) -> None:
    entries = {entry.key: entry.value for entry in tensor.external_data}  # type: ignore[attr-defined]
    location = entries.get("location", "")
    target = (path.parent / location).resolve()
    if not location or path.parent.resolve() not in target.parents or not target.is_file():
        raise CorruptFileError(
            f"{path.name}: {what} keeps its data in {location!r}, which is not a file beside the model"
        )
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", declared))
    except ValueError:
        raise CorruptFileError(
            f"{path.name}: {what} has a non-numeric external data offset or length"
        ) from None
    available = target.stat().st_size
    if offset < 0 or length != declared or offset + length > available:
        raise CorruptFileError(
            f"{path.name} declares {what} of {declared:,} bytes at offset {offset:,} (length {length:,}) in "
            f"{location}, which has {available:,} bytes",
            hint="the external data file is truncated or the initializer forged; re-export the model",
        )


def onnx_input_specs(model: object) -> list[InputSpec]:
    """Specs for the graph inputs that are not initializers; symbolic dims become 1 (first) or 16 (others)."""
    graph = model.graph  # type: ignore[attr-defined]
    initializers = {init.name: init for init in graph.initializer}
    vocab = _embedding_sizes(graph, initializers)
    specs: list[InputSpec] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [
            d.dim_value if d.dim_value > 0 else (1 if i == 0 else DEFAULT_DYNAMIC_DIM)
            for i, d in enumerate(tensor.shape.dim)
        ]
        dtype = _ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise ValidationError(
                f"ONNX input {value.name!r} has unsupported element type {tensor.elem_type}"
            )
        high = vocab.get(value.name)
        specs.append(
            InputSpec(
                name=value.name, shape=tuple(dims) or (1,), dtype=dtype, low=0 if high else None, high=high
            )
        )
    return specs


def _embedding_sizes(graph: object, initializers: dict) -> dict[str, int]:
    """Map integer graph inputs that index an embedding table (Gather on an initializer) to the table's rows."""
    sizes: dict[str, int] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in initializers:
            sizes[node.input[1]] = int(initializers[node.input[0]].dims[0])
    return sizes


def load_tensorflow(path: Path, options: LoadOptions, fmt: ModelFormat, data_dir: Path) -> LoadedModel:
    """Convert a SavedModel / Keras model to ONNX with tf2onnx (the `tf` extra), then load that ONNX file."""
    missing = [name for name in ("tensorflow", "tf2onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"{path.name} is a TensorFlow {'SavedModel' if fmt == ModelFormat.TF_SAVEDMODEL else 'Keras'} model; "
            f"reading it needs {' and '.join(missing)}, which are not installed",
            hint="pip install 'robopt[tf]' (tensorflow + tf2onnx), or export the model to ONNX yourself",
        )
    import tensorflow as tf  # pragma: no cover - exercised only where the tf extra is installed
    import tf2onnx

    from tools.intake.archive import file_sha256

    out_dir = Path(data_dir) / "intake" / "converted"
    out_dir.mkdir(parents=True, exist_ok=True)
    key = file_sha256(path) if path.is_file() else path.name
    target = out_dir / f"tf-{key[:16]}.onnx"
    if not target.exists():
        if fmt == ModelFormat.TF_SAVEDMODEL:
            tf2onnx.convert.from_saved_model(str(path), output_path=str(target))
        else:
            keras_model = tf.keras.models.load_model(str(path), safe_mode=True, compile=False)
            tf2onnx.convert.from_keras(keras_model, output_path=str(target))
    loaded = load_onnx(target, options)
    loaded.source, loaded.format = path, fmt
    loaded.metadata["converted_to"] = str(target)
    return loaded
