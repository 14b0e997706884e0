"""Load ONNX models (checker + an ONNX Runtime session) and TensorFlow/Keras models through tf2onnx when present."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tools.errors import CorruptFileError, MissingDependencyError, ValidationError, first_line
from tools.inputs import InputSpec
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


def load_onnx(path: Path, options: LoadOptions) -> LoadedModel:
    """Check the ONNX graph, open a CPU ONNX Runtime session, and derive input specs from the graph."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{path.name} is not a valid ONNX model: {first_line(exc)}") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise ValidationError(f"{path.name}: ONNX Runtime cannot open it: {first_line(exc)}") from None
    specs = list(options.input_specs) or onnx_input_specs(model)
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.ONNX,
        options=options,
        input_specs=specs,
        session=session,
        output_names=[o.name for o in session.get_outputs()],
        metadata={"opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}},
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
