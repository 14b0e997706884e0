"""What an ONNX export is checked and described with: parity against the PyTorch module on the same inputs,
the exporter's failures named by operator, and the `robopt.json` description embedded in the graph.

Split from `tools.compression.onnx_export` (which re-exports these names) to keep each module short.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import re
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from tools.compression.onnx_sessions import run_session, set_metadata_props
from tools.errors import OptimizationError
from tools.inputs import InputSpec, synthesize_inputs
from tools.techniques.artifacts import output_agreement
from tools.techniques.base import TechniqueContext

ROBOPT_METADATA_KEY = "robopt.json"
EXPORT_BATCH = 2  # a batch of 1 would let torch.export specialize the batch dimension to a constant
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>"),
    re.compile(r"target=torch\.ops\.([\w.]+)\]?"),
    re.compile(r"Unsupported FX nodes: \{'call_function': \['([^']+)'"),
    re.compile(r"\b(aten::\w+|aten\.\w+(?:\.\w+)?)"),
)


class TensorOutputs(nn.Module):
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
    wrapper = TensorOutputs(module.eval(), list(names))
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
        specs = [spec.model_copy(update={"shape": (EXPORT_BATCH, *spec.shape[1:])}) for spec in specs]
    return synthesize_inputs(specs, seed=seed)


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
    wrapper = TensorOutputs(module.eval(), [spec.name for spec in input_specs])
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
def quiet_exporter() -> Iterator[None]:
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
