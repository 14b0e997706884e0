"""ONNX export with parity: turn an eager PyTorch version into an ONNX Runtime graph that computes the same thing.

`export_to_onnx` (the dynamo exporter, named inputs, dynamic batch), `check_onnx_parity` and
`optimize_onnx_offline` are also used by the ONNX quantizers, which accept a PyTorch source by exporting it
first through `onnx_source_path`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tools.compression.onnx_axes import dynamic_axes, sequence_inputs, sequence_limit
from tools.compression.onnx_checks import (  # re-exported: callers import them from here
    EXPORT_BATCH,
    ROBOPT_METADATA_KEY,
    TensorOutputs,
    check_onnx_parity,
    export_error,
    export_inputs,
    flatten_tensors,
    module_outputs,
    parity_batches,
    quiet_exporter,
    require_parity,
    robopt_metadata,
    set_robopt_metadata,
    unsupported_operator,
)
from tools.compression.onnx_sessions import (
    OptimizationLevel,
    cpu_session,
    optimize_onnx_offline,
    run_session,
    set_metadata_props,
)
from tools.errors import OptimizationError
from tools.inputs import InputSpec
from tools.log import get_logger
from tools.techniques.artifacts import EXPORTABLE_INPUTS, save_onnx_model
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

__all__ = [  # with the names onnx_checks and onnx_sessions lend it, which callers import from here
    "DEFAULT_OPSET",
    "EXPORT_BATCH",
    "ROBOPT_METADATA_KEY",
    "OnnxExportConfig",
    "OptimizationLevel",
    "TensorOutputs",
    "check_onnx_parity",
    "cpu_session",
    "describe_export",
    "export_error",
    "export_inputs",
    "export_to_onnx",
    "exportable_module",
    "flatten_tensors",
    "graph_opset",
    "module_outputs",
    "onnx_source_path",
    "optimize_onnx_offline",
    "parity_batches",
    "quiet_exporter",
    "require_parity",
    "robopt_metadata",
    "run_session",
    "set_robopt_metadata",
    "unsupported_operator",
]

DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB cap, less room for the graph itself
_SCRIPTED_MAX_OPSET = 20  # the highest opset the TorchScript-based exporter writes
_BULKY_NODE_METADATA = frozenset({"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"})


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
    wrapper = TensorOutputs(module, names).eval()
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
        with quiet_exporter():
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
    drop_bulky_node_metadata(proto)
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
        with quiet_exporter(), warnings.catch_warnings():
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


def drop_bulky_node_metadata(proto: Any) -> None:
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
        # a policy's facts (feature keys, observation history) travel with the graph: see the ONNX loader
        **(
            {"policy": ctx.source.metadata["policy"]}
            if isinstance(ctx.source.metadata.get("policy"), dict)
            else {}
        ),
        **extra,
    }


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
