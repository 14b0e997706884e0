"""Deployable ONNX of a policy whose `select_action` path is one forward (ACT: observation -> action chunk).

The module exported is the whole path a robot runs: raw observations in, normalization, the network, and
unnormalized actions out (robopt's LeRobot policy module). The directory written holds `policy.onnx`
(dynamic batch, static image sizes), `export.json` (inputs, outputs, opset) and `parity.json` (whole action
chunks against PyTorch on held-out observations, never the calibration ones).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from tools.compression.onnx_export import DEFAULT_OPSET, export_to_onnx, graph_opset, module_outputs
from tools.compression.onnx_sessions import cpu_session
from tools.errors import InputSpecError, OptimizationError
from tools.inputs import InputSpec, synthesize_inputs
from tools.lerobot.parity import ParityReport, compare_chunks
from tools.log import get_logger

_log = get_logger("lerobot.export")

POLICY_ONNX = "policy.onnx"
MANIFEST_FILE = "export.json"
HELD_OUT_SEED = 7_000_000  # far from the seeds calibration and search draw from
PARITY_BATCH_SIZES = (1, 3)
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


class OnnxPolicyExport(BaseModel):
    """An exported policy directory: where its files are and how faithfully they reproduce the original."""

    directory: Path
    files: dict[str, str] = Field(description="Role -> file name inside the directory (e.g. 'policy').")
    manifest: dict[str, Any] = Field(description="What export.json holds: inputs, outputs, opset, kind.")
    parity: ParityReport

    def path(self, role: str = "policy") -> Path:
        """The path of one of the export's files."""
        return self.directory / self.files[role]


def load_policy_module(directory: Path, seed: int = 0) -> Any:
    """A LeRobot policy directory as robopt's policy module (LeRobot's own classes and processors)."""
    from tools.lerobot.imports import load_policy
    from tools.lerobot.policy_module import LeRobotPolicyModule, load_processors

    directory = Path(directory)
    policy = load_policy(directory)
    pre, post = load_processors(directory)
    return LeRobotPolicyModule(policy.eval(), pre, post, seed=seed)


def observation_specs(module: Any) -> list[InputSpec]:
    """Input specs of a policy module's raw observations at batch 1 (its `input_shapes`)."""
    return [InputSpec(name=name, shape=shape) for name, shape in module.input_shapes(1).items()]


def held_out_observations(
    specs: Sequence[InputSpec],
    count: int = 2,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    seed: int = HELD_OUT_SEED,
) -> list[dict[str, torch.Tensor]]:
    """Synthetic observations never used for calibration, at several batch sizes (dynamic batch is checked).

    Camera inputs (4-D and deeper float inputs) are uniform in [0, 1] like LeRobot's images; the rest normal.
    """
    batches = []
    for index in range(count):
        size = batch_sizes[index % len(batch_sizes)]
        resized = [spec.model_copy(update={"shape": (size, *spec.shape[1:])}) for spec in specs]
        batch = synthesize_inputs(resized, seed=seed + index)
        for spec in resized:
            if len(spec.shape) >= 4 and spec.torch_dtype.is_floating_point:
                generator = torch.Generator().manual_seed(seed + 100 + index)
                batch[spec.name] = torch.rand(spec.shape, generator=generator).to(spec.torch_dtype)
        batches.append(batch)
    return batches


def rename_outputs(proto: Any, names: Sequence[str]) -> None:
    """Rename a graph's outputs (and every use of them) to `names`, in order."""
    renames = {value.name: new for value, new in zip(proto.graph.output, names) if value.name != new}
    if not renames:
        return
    for node in proto.graph.node:
        for slot, name in enumerate(node.output):
            if name in renames:
                node.output[slot] = renames[name]
        for slot, name in enumerate(node.input):
            if name in renames:
                node.input[slot] = renames[name]
    for value in proto.graph.output:
        value.name = renames.get(value.name, value.name)


def refuse_sampling_graph(proto: Any, model_name: str) -> None:
    """Raise OptimizationError naming the random operator when a graph samples inside itself.

    Such a graph (VQ-BeT's code sampling, a sampler loop with its noise drawn inside) gives other actions on
    every call and on every runtime, so no parity check can pass; its noise must become an input instead.
    """
    found = sorted({node.op_type for node in proto.graph.node if node.op_type in RANDOM_OPS})
    if found:
        raise OptimizationError(
            f"the ONNX graph of {model_name} draws random numbers inside itself ({', '.join(found)}): its actions "
            "differ on every call, so it cannot reproduce the torch policy",
            hint="export the network without its sampling and feed the noise as an input (Diffusion Policy: "
            "tools.lerobot.diffusion_export); VQ-BeT's code sampling is not exportable yet",
            detail={"operator": found[0], "operators": found},
        )


def run_onnx(session: Any, observations: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session on the observations it declares; return its outputs by name."""
    feeds = {}
    for item in session.get_inputs():
        value = observations[item.name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feeds[item.name] = array.astype(np.float16) if item.type == "tensor(float16)" else array
    names = [item.name for item in session.get_outputs()]
    return {name: np.asarray(out, dtype=np.float32) for name, out in zip(names, session.run(None, feeds))}


def torch_reference(
    module: nn.Module,
    specs: Sequence[InputSpec],
    batches: Sequence[Mapping[str, torch.Tensor]],
    names: list[str],
) -> list[dict[str, torch.Tensor]]:
    """The module's outputs on each batch, named like the exported graph's outputs."""
    found = []
    for batch in batches:
        outputs = module_outputs(module, [s.name for s in specs], batch)
        found.append({name: tensor.float() for name, (_, tensor) in zip(names, outputs)})
    return found


def onnx_parity(
    onnx_path: Path,
    reference: Sequence[Mapping[str, torch.Tensor]],
    batches: Sequence[Mapping[str, torch.Tensor]],
    what: str,
    notes: Mapping[str, object] | None = None,
) -> ParityReport:
    """Run `onnx_path` on held-out `batches` and compare whole action chunks with `reference`."""
    session = cpu_session(Path(onnx_path), "basic")
    candidate = [run_onnx(session, batch) for batch in batches]
    return compare_chunks(reference, candidate, what=what, notes=notes)


def export_policy_onnx(
    module: nn.Module,
    input_specs: Sequence[InputSpec],
    directory: Path,
    *,
    opset: int = DEFAULT_OPSET,
    output_names: Sequence[str] = ("action",),
    held_out: Sequence[Mapping[str, torch.Tensor]] | None = None,
    max_abs_error: float = 1e-3,
    min_cosine: float = 0.999,
    metadata: Mapping[str, Any] | None = None,
) -> OnnxPolicyExport:
    """Export a single-forward policy (raw observations -> unnormalized action chunk) and check its parity.

    Raises OptimizationError naming the operator when the exporter cannot convert one, and when the graph's
    actions differ from PyTorch's on held-out observations (batch 1 and 3) beyond the tolerances.
    """
    import onnx

    if not input_specs:
        raise InputSpecError(
            "a policy export needs the observation specs", hint="give the policy's input specs"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / POLICY_ONNX
    started = time.perf_counter()
    export_to_onnx(
        module, list(input_specs), path, opset=opset, dynamic_batch=True, metadata=dict(metadata or {})
    )
    seconds = time.perf_counter() - started
    proto = onnx.load(str(path))
    names = list(output_names)[: len(proto.graph.output)]
    names += [value.name for value in proto.graph.output[len(names) :]]
    rename_outputs(proto, names)
    onnx.save(proto, str(path))
    refuse_sampling_graph(proto, type(module).__name__)
    batches = list(held_out) if held_out is not None else held_out_observations(input_specs)
    reference = torch_reference(module, input_specs, batches, names)
    parity = onnx_parity(path, reference, batches, "onnx fp32 vs torch")
    parity.save(directory)
    manifest = {
        "kind": "single_forward",
        "inputs": [spec.model_dump(mode="json") for spec in input_specs],
        "outputs": names,
        "opset": graph_opset(proto),
        "dynamic_axes": {"batch": 0},
        "export_seconds": round(seconds, 2),
        "bytes": path.stat().st_size,
        **dict(metadata or {}),
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    parity.require(max_abs_error, min_cosine)
    _log.info("exported a policy to ONNX", extra={"component": "lerobot.export", "path": str(path)})
    return OnnxPolicyExport(
        directory=directory, files={"policy": POLICY_ONNX}, manifest=manifest, parity=parity
    )
