"""ONNX export with parity: turn an eager PyTorch version into an ONNX Runtime graph that computes the same thing.

`export_to_onnx` (the dynamo exporter, named inputs, dynamic batch), `check_onnx_parity` and
`optimize_onnx_offline` are also used by the ONNX quantizers, which accept a PyTorch source by exporting it
first through `onnx_source_path`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch
from pydantic import Field
from torch import nn

from tools.compression.onnx_axes import dynamic_axes, sequence_inputs, sequence_limit
from tools.compression.onnx_sessions import (
    OptimizationLevel,
    cpu_session,
    optimize_onnx_offline,
    run_session,
    set_metadata_props,
)
from tools.errors import OptimizationError
from tools.inputs import InputSpec, synthesize_inputs
from tools.log import get_logger
from tools.techniques.artifacts import EXPORTABLE_INPUTS, output_agreement, save_onnx_model
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register

_log = get_logger("compression.onnx_export")

DEFAULT_OPSET = 18
ROBOPT_METADATA_KEY = "robopt.json"
_EXPORT_BATCH = 2  # a batch of 1 would let torch.export specialize the batch dimension to a constant
_PROTOBUF_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB cap, less room for the graph itself
_SCRIPTED_MAX_OPSET = 20  # the highest opset the TorchScript-based exporter writes
_BULKY_NODE_METADATA = frozenset({"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>"),
    re.compile(r"target=torch\.ops\.([\w.]+)\]?"),
    re.compile(r"Unsupported FX nodes: \{'call_function': \['([^']+)'"),
    re.compile(r"\b(aten::\w+|aten\.\w+(?:\.\w+)?)"),
)


class OnnxExportConfig(TechniqueConfig):
    """Export an eager PyTorch version to ONNX and prove it computes the same outputs in ONNX Runtime."""

    type: Literal["onnx_export"] = "onnx_export"
    opset: int = Field(
        default=DEFAULT_OPSET,
        ge=17,
        le=23,
        description="ONNX opset of the exported graph (the dynamo exporter writes 18 and converts; when a "
        "conversion fails it keeps 18, and the facts give the opset reached).",
        json_schema_extra={"search": [17, 18, 20]},
    )
    dynamic_batch: bool = Field(
        default=True, description="Keep the batch axis of every input symbolic; false fixes the spec's batch."
    )
    max_abs_error: float = Field(
        default=1e-3,
        gt=0,
        le=1.0,
        description="Largest absolute difference allowed between any ONNX Runtime and PyTorch output value.",
    )
    min_cosine: float = Field(
        default=0.9999,
        ge=0.0,
        le=1.0,
        description="Smallest cosine similarity allowed between ONNX Runtime and PyTorch outputs.",
    )
    graph_optimization_level: OptimizationLevel = Field(
        default="extended",
        description="ONNX Runtime graph optimization level for the parity session and, with save_optimized, "
        "baked into the artifact.",
        json_schema_extra={"search": ["basic", "extended", "all"]},
    )
    save_optimized: bool = Field(
        default=False,
        description="Store the ONNX Runtime-optimized graph (SessionOptions.optimized_model_filepath) instead "
        "of the portable export; 'extended'/'all' then contain CPU-specific fused ops.",
    )
    parity_inputs: int = Field(
        default=4, ge=1, le=64, description="Input batches compared between PyTorch and ONNX Runtime."
    )


class _TensorOutputs(nn.Module):
    """Take the inputs positionally in spec order, call the model by name, and return its tensors as a tuple.

    Hugging Face models get `use_cache=False` so that no cache object (which ONNX cannot return) is built.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.binding, self.extra = _call_convention(model, names)

    def named_outputs(self, *inputs: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Run the model and return its output tensors with names."""
        if self.binding != "positional":
            result = self.model(**dict(zip(self.names, inputs)), **self.extra)
        else:
            result = self.model(*inputs, **self.extra)
        return flatten_tensors(result)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor for _, tensor in self.named_outputs(*inputs))


def module_outputs(
    module: nn.Module, names: list[str], batch: Mapping[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """Call `module` on the named inputs the way the exporter does; return its output tensors with names."""
    wrapper = _TensorOutputs(module.eval(), list(names))
    with torch.inference_mode():
        return wrapper.named_outputs(*(batch[name] for name in names))


def _call_convention(model: nn.Module, names: list[str]) -> tuple[str, dict[str, Any]]:
    """How forward() takes the inputs ('explicit' names, '**kwargs' or 'positional') and extra kwargs to pass."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "positional", {}
    explicit = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    extra = {"use_cache": False} if "use_cache" in params and "use_cache" not in names else {}
    if set(names) <= explicit:
        return "explicit", extra
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return ("**kwargs" if var_kw else "positional"), extra


def flatten_tensors(value: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's output (tensor, tuple, dict or ModelOutput) with a name, in a stable order."""
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, torch.Tensor):
        found.append((prefix, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found.extend(flatten_tensors(item, str(key)))
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            found.extend(flatten_tensors(item, f"{prefix}_{index}"))
    return found


def export_inputs(
    specs: list[InputSpec], dynamic_batch: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Synthetic example inputs for export: batch 2 when the batch axis is dynamic, the spec's batch otherwise."""
    if dynamic_batch:
        specs = [spec.model_copy(update={"shape": (_EXPORT_BATCH, *spec.shape[1:])}) for spec in specs]
    return synthesize_inputs(specs, seed=seed)


def export_to_onnx(
    module: nn.Module,
    input_specs: list[InputSpec],
    path: Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export `module` with the dynamo exporter to `path` (inputs named after the specs); return the path.

    Raises OptimizationError naming the unsupported operator when the exporter reports one.
    """
    import onnx

    if not input_specs:
        raise OptimizationError("cannot export to ONNX without input specs", hint="give --input-shape specs")
    weight_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    if weight_bytes >= _PROTOBUF_LIMIT:
        raise OptimizationError(
            f"{type(module).__name__} holds {weight_bytes / 2**30:.1f} GiB of weights; a single-file ONNX graph "
            "is limited to 2 GiB",
            hint="quantize or prune it in PyTorch first; external-data ONNX versions are not supported yet",
        )
    path = Path(path)
    names = [spec.name for spec in input_specs]
    module = module.eval()
    wrapper = _TensorOutputs(module, names).eval()
    example = export_inputs(input_specs, dynamic_batch)
    args: tuple[Any, ...] = tuple(example[name] for name in names)
    with torch.no_grad():
        output_names = _unique([name for name, _ in wrapper.named_outputs(*args)])
    if isinstance(module, torch.jit.ScriptModule):
        _export_scripted(module, args, names, output_names, path, opset, dynamic_batch)
        return _finish_export(path, metadata)
    axes = dynamic_axes(module, input_specs, dynamic_batch)
    target: nn.Module = module
    kwargs: dict[str, Any] | None = None
    dynamic_shapes: Any = None
    if wrapper.binding == "explicit":
        # Export the model itself, so node scopes and weight names are its own module paths.
        kwargs, args = {**example, **wrapper.extra}, ()
        if axes:
            dynamic_shapes = {
                **{name: axes.get(name) for name in names},
                **{key: None for key in wrapper.extra},
            }
    elif wrapper.binding == "**kwargs":  # names only reach forward() through **kwargs: export the wrapper
        target = wrapper
        if axes:
            dynamic_shapes = (tuple(axes.get(name) for name in names),)  # one entry: the wrapper's *inputs
    elif axes and _takes_var_positional(module):  # forward(*inputs): one entry for the tuple
        dynamic_shapes = (tuple(axes.get(name) for name in names),)
    elif axes:
        dynamic_shapes = tuple(axes.get(name) for name in names)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                target,
                args,
                kwargs=kwargs,
                input_names=names,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                verbose=False,
                custom_translation_table=_extra_translations(),
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many error types
        raise export_error(exc, type(module).__name__) from exc
    if program is None:
        raise OptimizationError("the ONNX exporter returned no program")
    program.save(str(path), external_data=False)
    return _finish_export(path, metadata)


def _finish_export(path: Path, metadata: dict[str, Any] | None) -> Path:
    """Drop bulky node metadata and record robopt's description (with the opset reached) in the file."""
    import onnx

    proto = onnx.load(str(path))
    _drop_bulky_node_metadata(proto)
    if metadata is not None:  # record the opset reached: a down-conversion that fails keeps the exporter's
        set_robopt_metadata(proto, {**metadata, "opset": graph_opset(proto)})
    onnx.save(proto, str(path))
    return path


def _takes_var_positional(module: nn.Module) -> bool:
    """Whether forward() takes its inputs as `*inputs` (torch.export then wants one dynamic-shape entry)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def _parity_at_other_lengths(
    module: nn.Module, specs: list[InputSpec], session: Any, config: OnnxExportConfig
) -> dict[str, Any]:
    """With a dynamic sequence axis, check parity at a shorter and a longer sequence than the measured one
    too, so the graph is known to hold at the lengths a deployment feeds it; {} without token inputs."""
    tokens, limit = set(sequence_inputs(specs)), sequence_limit(module)
    if not tokens or limit is None:
        return {}
    measured = next(spec.shape[1] for spec in specs if spec.name in tokens)
    lengths = sorted({max(2, measured // 2), min(limit, measured * 2)} - {measured})
    checked: dict[str, Any] = {}
    for length in lengths:
        resized = [
            spec.model_copy(update={"shape": (spec.shape[0], length)}) if spec.name in tokens else spec
            for spec in specs
        ]
        batches = [export_inputs(resized, config.dynamic_batch, seed=2000 + i) for i in range(2)]
        parity = check_onnx_parity(module, specs, session, batches)
        require_parity(
            parity,
            config.max_abs_error,
            config.min_cosine,
            f"the exported ONNX graph at sequence length {length}",
        )
        checked[str(length)] = {"max_abs_error": parity["max_abs_error"], "min_cosine": parity["min_cosine"]}
    return {"sequence_lengths": [measured, *lengths], "parity_by_length": checked}


def _export_scripted(
    module: torch.jit.ScriptModule,
    args: tuple[Any, ...],
    names: list[str],
    output_names: list[str],
    path: Path,
    opset: int,
    dynamic_batch: bool,
) -> None:
    """Export a TorchScript module with the TorchScript-based exporter (torch.export cannot trace a
    ScriptModule); the batch axis of every input and output is dynamic when asked."""
    axes = {name: {0: "batch"} for name in [*names, *output_names]} if dynamic_batch else None
    try:
        with _quiet_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=output_names,
                opset_version=min(opset, _SCRIPTED_MAX_OPSET),
                dynamic_axes=axes,
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many error types
        raise export_error(exc, "the TorchScript module") from exc


def graph_opset(proto: Any) -> int:
    """The default-domain opset an ONNX model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _drop_bulky_node_metadata(proto: Any) -> None:
    """Drop per-node stack traces and FX text (machine paths, most of a tiny model's bytes); keep scopes."""
    for node in proto.graph.node:
        set_metadata_props(
            node, [(p.key, p.value) for p in node.metadata_props if p.key not in _BULKY_NODE_METADATA]
        )


def _extra_translations() -> dict[Any, Any]:
    """ONNX translations for ops the exporter lacks but real models hit.

    `aten._is_all_true` comes from the input checks of Hugging Face VLMs (image tokens match image features),
    which torch.export keeps as runtime assertions.
    """
    from onnxscript import BOOL, INT32
    from onnxscript import opset18 as op

    def is_all_true(self: Any) -> Any:
        return op.Cast(op.ReduceMin(op.Cast(self, to=INT32.dtype), keepdims=0), to=BOOL.dtype)

    return {torch.ops.aten._is_all_true.default: is_all_true}


def _unique(names: list[str]) -> list[str]:
    """Suffix repeated output names with their occurrence count."""
    return [
        name if not names[:i].count(name) else f"{name}_{names[:i].count(name)}"
        for i, name in enumerate(names)
    ]


def export_error(exc: BaseException, model_name: str) -> OptimizationError:
    """Turn an exporter exception into one line that names the unsupported operator when one is reported."""
    texts = []
    current: BaseException | None = exc
    while current is not None and len(texts) < 8:
        texts.append(_ANSI.sub("", str(current)))
        current = current.__cause__ or current.__context__
    operator = unsupported_operator("\n".join(texts))
    if operator:
        return OptimizationError(
            f"ONNX export of {model_name} failed: operator {operator} is not supported by the ONNX exporter",
            hint=f"replace {operator} with supported operations, register an ONNX translation for it "
            "(custom_translation_table), or keep this version in PyTorch",
            detail={"operator": operator, "exception": type(exc).__name__},
        )
    stage = "torch.export" if "step 1/3" in texts[0] else "conversion"
    return OptimizationError(
        f"ONNX export of {model_name} failed during {stage}: {_summary(texts)}",
        hint="data-dependent control flow and Python-side state do not export; try dynamic_batch=false "
        "or simplify forward()",
        detail={"exception": type(exc).__name__},
    )


def _summary(texts: list[str]) -> str:
    """The exporter's 'Exception summary' line when there is one, else the first line of the deepest cause."""
    _, found, summary = texts[0].partition("## Exception summary")
    text = summary if found else texts[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:300]


def unsupported_operator(text: str) -> str | None:
    """The operator an exporter message says it cannot convert (e.g. 'aten._linalg_eigh.default'), or None."""
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return ".".join(group for group in match.groups() if group).replace("::", ".")
    return None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and INFO logs."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def set_robopt_metadata(proto: Any, description: dict[str, Any]) -> None:
    """Write (or replace) the `robopt.json` metadata entry of an ONNX model."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != ROBOPT_METADATA_KEY]
    set_metadata_props(
        proto, kept + [(ROBOPT_METADATA_KEY, json.dumps(description, sort_keys=True, default=str))]
    )


def robopt_metadata(proto: Any) -> dict[str, Any]:
    """The `robopt.json` metadata entry of an ONNX model, or {}."""
    for prop in proto.metadata_props:
        if prop.key == ROBOPT_METADATA_KEY:
            return dict(json.loads(prop.value))
    return {}


def describe_export(ctx: TechniqueContext, technique: str, **extra: Any) -> dict[str, Any]:
    """The description embedded in exported graphs: what it was made from, its inputs, and how."""
    module = ctx.source.module
    architecture = ctx.source.metadata.get("architecture") or (
        f"{type(module).__module__}:{type(module).__qualname__}" if module is not None else None
    )
    return {
        "architecture": architecture,
        "config": ctx.source.config,
        "input_specs": [spec.model_dump(mode="json") for spec in ctx.source.input_specs],
        "input_flags": [spec.to_flag() for spec in ctx.source.input_specs],
        "source_version": ctx.source_version,
        "technique": technique,
        **extra,
    }


def parity_batches(
    ctx: TechniqueContext, count: int, dynamic_batch: bool = True
) -> tuple[list[dict[str, torch.Tensor]], str]:
    """Up to `count` input batches from the calibration data (or synthetic ones), and where they came from."""
    specs = ctx.source.input_specs
    names = [spec.name for spec in specs]
    calibration = ctx.calibration
    if calibration is not None and all(name in calibration.batches[0] for name in names):
        batches = [{name: batch[name] for name in names} for batch in calibration.batches[:count]]
        if not dynamic_batch:
            batches = [{s.name: b[s.name][: s.shape[0]] for s in specs} for b in batches]
        return batches, calibration.source
    return [export_inputs(specs, dynamic_batch, seed=1000 + i) for i in range(count)], "synthetic"


def check_onnx_parity(
    module: nn.Module,
    input_specs: list[InputSpec],
    session: Any,
    batches: list[dict[str, torch.Tensor]],
) -> dict[str, Any]:
    """Compare the module's outputs with the ONNX session's on `batches`: worst max-abs error and cosine."""
    wrapper = _TensorOutputs(module.eval(), [spec.name for spec in input_specs])
    names = [item.name for item in session.get_outputs()]
    worst: dict[int, dict[str, float]] = {}
    for batch in batches:
        with torch.inference_mode():
            reference = [t.detach().float() for t in wrapper(*(batch[s.name] for s in input_specs))]
        candidate = run_session(session, batch)
        for agreement in output_agreement(reference, candidate):
            entry = worst.setdefault(
                agreement.index, {"max_abs_error": 0.0, "cosine": 1.0, "relative_l2": 0.0}
            )
            entry["max_abs_error"] = max(entry["max_abs_error"], agreement.max_abs_error)
            entry["cosine"] = min(entry["cosine"], agreement.cosine)
            entry["relative_l2"] = max(entry["relative_l2"], agreement.relative_l2)
    outputs = [{"name": names[i] if i < len(names) else str(i), **worst[i]} for i in sorted(worst)]
    return {
        "outputs": outputs,
        "max_abs_error": max(item["max_abs_error"] for item in outputs),
        "min_cosine": min(item["cosine"] for item in outputs),
        "batches": len(batches),
    }


def require_parity(parity: dict[str, Any], max_abs_error: float, min_cosine: float, what: str) -> None:
    """Raise OptimizationError when `parity` breaks either tolerance, naming the worst output."""
    bad = [o for o in parity["outputs"] if o["max_abs_error"] > max_abs_error or o["cosine"] < min_cosine]
    if bad:
        worst = max(bad, key=lambda o: o["max_abs_error"])
        raise OptimizationError(
            f"{what} does not match PyTorch: output {worst['name']!r} max abs error "
            f"{worst['max_abs_error']:.3g} (allowed {max_abs_error:.3g}), cosine {worst['cosine']:.6f} "
            f"(required {min_cosine})",
            hint="try another opset or graph_optimization_level='basic', or loosen the tolerance if the "
            "difference is acceptable",
            detail={"parity": parity},
        )


def exportable_module(ctx: TechniqueContext, technique: str) -> nn.Module:
    """The source as a module the ONNX exporter takes: an eager module, or a TorchScript archive as it is."""
    if isinstance(ctx.source.module, torch.jit.ScriptModule):
        return ctx.source.module
    return ctx.require_module(technique)


def onnx_source_path(ctx: TechniqueContext, technique: str) -> tuple[Path, dict[str, Any]]:
    """The source version as an ONNX file: the stored graph, or an export (with parity) of an eager module.

    Returns the path and facts saying whether (and how faithfully) an export happened.
    """
    import onnx

    if ctx.source.session is not None:
        return Path(ctx.source.metadata.get("converted_to", ctx.source.path)), {"exported_from_torch": False}
    module = exportable_module(ctx, technique)
    config = OnnxExportConfig()
    path = export_to_onnx(
        module,
        ctx.source.input_specs,
        ctx.work_dir / "exported_fp32.onnx",
        opset=config.opset,
        metadata=describe_export(ctx, "onnx_export", opset=config.opset, dynamic_batch=True),
    )
    batches, _ = parity_batches(ctx, 2)
    parity = check_onnx_parity(module, ctx.source.input_specs, cpu_session(path, "basic"), batches)
    require_parity(parity, config.max_abs_error, config.min_cosine, f"the ONNX export made for {technique}")
    opset = graph_opset(onnx.load(str(path), load_external_data=False))
    return path, {"exported_from_torch": True, "export_opset": opset, "export_parity": parity}


@register(
    OnnxExportConfig,
    TechniqueSpec(
        name="onnx_export",
        family=Family.EXPORT,
        summary="Export an eager PyTorch model to ONNX (dynamo exporter, dynamic batch) and verify output parity "
        "in ONNX Runtime; optionally store the ORT-optimized graph.",
        needs=Needs(
            packages=("onnx", "onnxruntime", "onnxscript"),
            install_hint="pip install onnx onnxruntime onnxscript",
        ),
        input_formats=EXPORTABLE_INPUTS,
        output_format="onnx",
        runtimes=("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"),
        precision="fp32",
        expected_effect="Same outputs and size (measured on the reference VLA: max abs error 5e-8, cosine 1.0); "
        "on ORT CPU, 1 thread, batch 1 the VLA ran in 1.9 ms vs 4.9 ms in eager PyTorch (2.6x faster).",
    ),
)
def _apply_onnx_export(ctx: TechniqueContext, config: OnnxExportConfig) -> TechniqueProduct:
    """Export the source module, check parity on calibration (or synthetic) batches, and store the graph."""
    import onnx

    module = exportable_module(ctx, config.type)
    specs = ctx.source.input_specs
    ctx.progress(25, f"onnx_export: exporting {type(module).__name__} at opset {config.opset}")
    started = time.perf_counter()
    exported = export_to_onnx(
        module,
        specs,
        ctx.work_dir / "exported.onnx",
        opset=config.opset,
        dynamic_batch=config.dynamic_batch,
        metadata=describe_export(ctx, config.type, opset=config.opset, dynamic_batch=config.dynamic_batch),
    )
    export_seconds = time.perf_counter() - started
    artifact = exported
    if config.save_optimized:
        ctx.progress(
            50, f"onnx_export: optimizing the graph offline at level {config.graph_optimization_level}"
        )
        artifact = optimize_onnx_offline(
            exported, ctx.work_dir / "optimized.onnx", config.graph_optimization_level
        )
    else:
        ctx.progress(50, "onnx_export: export done")
    ctx.progress(75, f"onnx_export: checking parity on {config.parity_inputs} input batches")
    batches, source = parity_batches(ctx, config.parity_inputs, config.dynamic_batch)
    session = cpu_session(artifact, config.graph_optimization_level)
    parity = check_onnx_parity(module, specs, session, batches)
    parity["inputs_source"] = source
    require_parity(parity, config.max_abs_error, config.min_cosine, "the exported ONNX graph")
    parity.update(_parity_at_other_lengths(module, specs, session, config))
    proto = onnx.load(str(artifact), load_external_data=False)
    path, fmt, options = save_onnx_model(artifact, ctx.work_dir, specs)
    facts = {
        "parity": parity,
        "opset": graph_opset(proto),
        "requested_opset": config.opset,
        "dynamic_batch": config.dynamic_batch,
        "graph_optimization_level": config.graph_optimization_level,
        "optimized_offline": config.save_optimized,
        "export_seconds": round(export_seconds, 2),
        "onnx_nodes": len(proto.graph.node),
        "op_types": dict(Counter(node.op_type for node in proto.graph.node).most_common()),
        "inputs": [item.name for item in session.get_inputs()],
        "outputs": [item.name for item in session.get_outputs()],
    }
    _log.info("exported to ONNX", extra={"job_id": ctx.job_id, "technique": config.type})
    return TechniqueProduct(path, fmt, options, facts)
