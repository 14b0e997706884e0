"""The model profile behind `robopt analyze`: size, parameters and FLOPs by component, architecture, latency.

`profile_model` is pure and in-process (one forward pass on the example inputs, no timing);
`analyze_model` adds latency and memory measured in a child process by `tools.latency.measure_latency`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tools.errors import ValidationError, first_line
from tools.intake.types import LoadedModel
from tools.latency import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_MEASURE_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WARMUP,
    LatencyRequest,
    LatencyResult,
    default_threads,
    make_runner,
    measure_latency,
)
from tools.log import get_logger
from tools.profiling.architecture import describe_architecture
from tools.profiling.common import (
    artifact_size,
    component_table,
    describe_outputs,
    dtype_name,
    dtype_table,
    layer_type_table,
)
from tools.profiling.onnx_profile import profile_graph
from tools.profiling.schema import (
    ArchitecturePattern,
    ComponentProfile,
    ComponentRole,
    ConvBackbone,
    DtypeProfile,
    LayerTypeProfile,
    ModelProfile,
    OpFlops,
    TensorInfo,
    TransformerStack,
)
from tools.profiling.table import format_profile_table
from tools.profiling.torch_profile import (
    action_hint,
    collect_weights,
    component_flops,
    component_index,
    config_mentions_action,
    count_flops,
    find_convs,
    find_stacks,
    linear_layers,
    normalization_types,
)

log = get_logger("profiling")

__all__ = [
    "ArchitecturePattern",
    "ComponentProfile",
    "ComponentRole",
    "ConvBackbone",
    "DtypeProfile",
    "LatencyResult",
    "LayerTypeProfile",
    "ModelProfile",
    "OpFlops",
    "TensorInfo",
    "TransformerStack",
    "analyze_model",
    "format_profile_table",
    "profile_model",
    "profile_model_or_sizes",
]


def profile_model(model: LoadedModel, *, inputs: dict[str, torch.Tensor] | None = None) -> ModelProfile:
    """Profile a loaded model in-process: weights, FLOPs, inputs/outputs and architecture; nothing is timed.

    Runs one forward pass on `inputs` (default: the model's deterministic example inputs).
    """
    if model.module is None and model.session is None:
        raise ValidationError("the loaded model has neither a torch module nor an ONNX Runtime session")
    inputs = model.example_inputs() if inputs is None else inputs
    described = [
        TensorInfo(name=name, shape=[int(d) for d in t.shape], dtype=dtype_name(t.dtype))
        for name, t in inputs.items()
    ]
    log.info("profiling model", extra={"source": str(model.source), "format": model.format.value})
    if model.module is not None:
        return _profile_torch(model, model.module, inputs, described)
    return _profile_onnx(model, model.session, inputs, described)


_OPTIONAL_PROFILE_FAILURES = (
    RuntimeError,
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    NotImplementedError,
)


def profile_model_or_sizes(model: LoadedModel) -> tuple[ModelProfile, str | None]:
    """Profile the model; when a part of the profile fails (FLOPs by component, the architecture walk), fall back
    to its weights alone and return why, so an analysis goes on with a note instead of ending the job."""
    try:
        return profile_model(model), None
    except _OPTIONAL_PROFILE_FAILURES as exc:
        reason = f"{type(exc).__name__}: {first_line(exc, 200)}"
    log.warning("profile failed; sizes only", extra={"source": str(model.source), "reason": reason})
    from tools.evaluation.size import size_of_loaded

    size = size_of_loaded(model)
    profile = ModelProfile(
        format=model.format,
        runtime=model.runtime,
        source=model.source,
        path=model.path,
        file_size_bytes=artifact_size(model.path),
        parameters=size.total_params,
        parameter_bytes=size.weight_bytes,
        architecture=ArchitecturePattern(kind="unknown", is_vla=False, summary="not profiled"),
        warnings=[f"FLOPs and components skipped ({reason}); sizes only"],
    )
    return profile, f"analysis: FLOPs and components skipped ({reason})"


def analyze_model(
    model: LoadedModel,
    *,
    latency: bool = True,
    threads: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    max_measure_s: float = DEFAULT_MAX_MEASURE_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    seed: int = 0,
    data_dir: Path | None = None,
) -> ModelProfile:
    """Profile the model and, when `latency`, add batch-1 latency and memory measured in a child process.

    The child loads `model.source` through intake with the same options and input specs, so it measures
    exactly what was profiled; `threads` defaults to the number of physical cores.
    """
    profile = profile_model(model)
    if not latency:
        return profile
    request = LatencyRequest(
        source=model.source,
        options=model.options.model_copy(update={"input_specs": tuple(model.input_specs)}),
        data_dir=data_dir,
        threads=threads or default_threads(),
        warmup=warmup,
        iterations=iterations,
        max_measure_s=max_measure_s,
        seed=seed,
        timeout_s=timeout_s,
    )
    return profile.model_copy(update={"latency": measure_latency(request)})


def _profile_torch(
    model: LoadedModel, module: torch.nn.Module, inputs: dict[str, torch.Tensor], described: list[TensorInfo]
) -> ModelProfile:
    """Profile a torch module: weights, one counted forward pass, components and structure."""
    records, tied, buffer_bytes = collect_weights(module)
    index = component_index(module)
    warnings: list[str] = []
    stats = count_flops(module, make_runner(model, inputs)) if inputs else None
    if stats is None:
        warnings.append("no input specification: FLOPs and outputs were not measured")
    else:
        warnings += stats.warnings
    per_component = None
    if stats is not None and stats.total is not None:
        if isinstance(module, torch.jit.ScriptModule):
            warnings.append("FLOPs by component are unavailable for TorchScript (module hooks do not run)")
        else:
            try:
                per_component = component_flops(index, stats.by_module)
            except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
                # an optional figure: the profile goes on without it (issue 14 ended a job here)
                warnings.append(f"FLOPs by component skipped ({type(exc).__name__}: {first_line(exc, 200)})")
    stacks = find_stacks(module, index)
    convs = find_convs(module, index)
    components = component_table(records, index, per_component)
    architecture = describe_architecture(
        components,
        stacks,
        convs,
        linear_layers(module, index),
        normalization_types(module),
        action_hint(module, model.config),
    )
    return ModelProfile(
        format=model.format,
        runtime=model.runtime,
        source=model.source,
        path=model.path,
        file_size_bytes=artifact_size(model.path),
        parameters=sum(r.numel for r in records),
        parameter_bytes=sum(r.nbytes for r in records),
        buffer_bytes=buffer_bytes,
        tied_parameters=tied,
        components=components,
        layer_types=layer_type_table(records),
        dtypes=dtype_table(records),
        flops=stats.total if stats else None,
        flops_by_op=stats.by_op if stats else [],
        flops_uncounted=stats.uncounted if stats else [],
        inputs=described,
        outputs=describe_outputs(stats.outputs, model.output_names) if stats else [],
        architecture=architecture,
        warnings=warnings,
    )


def _profile_onnx(
    model: LoadedModel, session: Any, inputs: dict[str, torch.Tensor], described: list[TensorInfo]
) -> ModelProfile:
    """Profile an ONNX model: the graph for weights and FLOPs, the session for real outputs."""
    graph = profile_graph(model.path, list(model.input_specs), model.config)
    warnings = list(graph.warnings)
    outputs: list[TensorInfo] = []
    if inputs:
        arrays = make_runner(model, inputs)()
        names = [o.name for o in session.get_outputs()]
        outputs = describe_outputs(dict(zip(names, arrays)))
    else:
        warnings.append("no input specification: outputs were not measured")
    per_component = graph.flops_by_component if graph.flops is not None else None
    components = component_table(graph.records, graph.index, per_component)
    architecture = describe_architecture(
        components,
        graph.stacks,
        graph.convs,
        graph.linear_layers,
        graph.normalization,
        config_mentions_action(model.config),
    )
    return ModelProfile(
        format=model.format,
        runtime=model.runtime,
        source=model.source,
        path=model.path,
        file_size_bytes=artifact_size(model.path, graph.external_files),
        parameters=sum(r.numel for r in graph.records),
        parameter_bytes=sum(r.nbytes for r in graph.records),
        buffer_bytes=graph.constant_bytes,
        components=components,
        layer_types=layer_type_table(graph.records),
        dtypes=dtype_table(graph.records),
        flops=graph.flops,
        flops_by_op=graph.flops_by_op,
        flops_uncounted=graph.uncounted,
        inputs=described,
        outputs=outputs,
        architecture=architecture,
        warnings=warnings,
    )
