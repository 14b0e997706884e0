"""Artifacts of versions: write a torch module or an ONNX model as a deployable file, load a stored version,
run a loaded model and compare its outputs with another's.

Torch outputs are stored as a whole pickled module (`model.pt`): the only format that keeps a pruned or
quantized module's changed shapes and tensor subclasses. robopt loads its own versions with `trust_pickle`
only after the version's sha256 is verified, through the same allowlist as a user's file (model classes only,
plus the exact globals recorded when the version was written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from tools.errors import MeasurementError
from tools.inputs import InputSpec
from tools.intake import LoadedModel, LoadOptions, ModelFormat, load_model
from tools.latency import make_runner
from tools.techniques.base import TechniqueContext, TechniqueProduct
from tools.techniques.module_io import output_tensors
from tools.versions import VersionManifest, VersionStore

TORCH_ARTIFACT = "model.pt"
ONNX_ARTIFACT = "model.onnx"
# Source formats that load as an eager torch module: what a technique transforming modules accepts.
TORCH_INPUTS = (
    ModelFormat.TORCH_PICKLED_MODULE.value,
    ModelFormat.TORCH_STATE_DICT.value,
    ModelFormat.SAFETENSORS.value,
    ModelFormat.HF_DIRECTORY.value,
    ModelFormat.LEROBOT_POLICY.value,
)
# What the ONNX exporter takes: eager modules and TorchScript archives (exported with the TorchScript exporter).
EXPORTABLE_INPUTS = (*TORCH_INPUTS, ModelFormat.TORCHSCRIPT.value)
# What a technique that exports to ONNX Runtime first (or takes ONNX as it is) accepts.
ONNX_OR_TORCH_INPUTS = (ModelFormat.ONNX.value, *EXPORTABLE_INPUTS)


def save_torch_module(
    module: torch.nn.Module, work_dir: Path, input_specs: list[InputSpec], name: str = TORCH_ARTIFACT
) -> tuple[Path, str, LoadOptions]:
    """Write `module` whole into `work_dir`; return (path, format, the load options that read it back)."""
    from tools.intake.pickle_scan import classify_torch_pickle, split_trusted_globals

    path = Path(work_dir) / name
    drop_output_capturing_hooks(module)
    torch.save(module.eval(), path)
    _, imported = classify_torch_pickle(path)
    _, beyond = split_trusted_globals(
        imported
    )  # what the allowlist alone would refuse: robopt vouches for these
    return path, ModelFormat.TORCH_PICKLED_MODULE.value, torch_load_options(input_specs, beyond)


def save_module_product(
    ctx: TechniqueContext, module: torch.nn.Module, facts: dict[str, Any]
) -> TechniqueProduct:
    """Save a handler's transformed `module` whole in `ctx.work_dir`; return it as the handler's product."""
    path, fmt, options = save_torch_module(module, ctx.work_dir, ctx.source.input_specs)
    return TechniqueProduct(path, fmt, options, facts)


def drop_output_capturing_hooks(model: torch.nn.Module) -> None:
    """Remove the forward hooks transformers 5 installs on a first forward to record outputs.

    They are local functions, which pickle cannot store; clearing the model's "installed" mark makes
    transformers install them again on the next forward after loading.
    """
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__qualname__", "").endswith("output_capturing_hook"):
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False


def torch_load_options(input_specs: list[InputSpec], trusted: list[str] | None = None) -> LoadOptions:
    """Load options for a robopt-written pickled module: trusted (robopt wrote it, its sha256 is checked before
    loading) for the model libraries' classes and the exact globals recorded when it was written (the user's
    classes, hooks, kernel rebuilders: from a model already trusted at intake), with its input specs."""
    return LoadOptions(
        trust_pickle=True, trusted_globals=tuple(trusted or ()), input_specs=tuple(input_specs)
    )


def save_onnx_model(
    model: Any, work_dir: Path, input_specs: list[InputSpec], name: str = ONNX_ARTIFACT
) -> tuple[Path, str, LoadOptions]:
    """Write an `onnx.ModelProto` (or copy an .onnx file) into `work_dir`; return (path, format, options)."""
    import shutil

    import onnx

    path = Path(work_dir) / name
    if isinstance(model, (str, Path)):
        if Path(model) != path:
            shutil.copy2(model, path)
    else:
        onnx.save(model, str(path))
    return path, ModelFormat.ONNX.value, LoadOptions(input_specs=tuple(input_specs))


def load_version(store: VersionStore, job_id: str, version_id: str, data_dir: Path) -> LoadedModel:
    """Verify a stored version's checksum and load it the way its manifest says."""
    manifest = store.verify(job_id, version_id)
    return load_manifest(store, manifest, data_dir)


def load_manifest(store: VersionStore, manifest: VersionManifest, data_dir: Path) -> LoadedModel:
    """Load the artifact a manifest describes (without re-hashing it)."""
    options = LoadOptions.model_validate(manifest.load_options)
    loaded = load_model(store.artifact_path(manifest.job_id, manifest.id), options, data_dir)
    loaded.metadata.setdefault("version_id", manifest.id)
    return loaded


def run_outputs(model: LoadedModel, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run one forward pass and return every output tensor, flattened in order, as float CPU tensors.

    Only the inputs the model declares (its input specs) are fed, so one batch of task data serves models
    that take different subsets of it (the reference VLA and the conv policy).
    """
    fed = {spec.name: inputs[spec.name] for spec in model.input_specs if spec.name in inputs}
    raw = make_runner(model, fed or dict(inputs))()
    found = [tensor.detach().to("cpu", torch.float32) for tensor in output_tensors(raw, floating_only=False)]
    if not found:
        raise MeasurementError("the model returned no tensor output")
    return found


@dataclass(frozen=True)
class OutputAgreement:
    """How closely one output of a candidate matches the reference's."""

    index: int
    max_abs_error: float
    cosine: float
    relative_l2: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the fields as a JSON-ready dict."""
        return {
            "index": self.index,
            "max_abs_error": self.max_abs_error,
            "cosine": self.cosine,
            "relative_l2": self.relative_l2,
        }


def output_agreement(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> list[OutputAgreement]:
    """Compare outputs pairwise: max abs error, cosine similarity and relative L2 of the flattened tensors."""
    if len(reference) != len(candidate):
        raise MeasurementError(
            f"the candidate returns {len(candidate)} outputs, the reference {len(reference)}"
        )
    results = []
    for index, (ref, cand) in enumerate(zip(reference, candidate)):
        if ref.shape != cand.shape:
            raise MeasurementError(
                f"output {index} has shape {tuple(cand.shape)}, the reference {tuple(ref.shape)}"
            )
        a = ref.reshape(-1).double()
        b = cand.reshape(-1).double()
        diff = (a - b).abs()
        ref_norm = float(a.norm())
        both = ref_norm * float(b.norm())
        cosine = float(torch.dot(a, b) / both) if both > 0 else (1.0 if float(diff.max()) == 0 else 0.0)
        rel = float((a - b).norm() / ref_norm) if ref_norm > 0 else float((a - b).norm())
        results.append(
            OutputAgreement(
                index=index,
                max_abs_error=float(diff.max()) if diff.numel() else 0.0,
                cosine=cosine,
                relative_l2=rel,
            )
        )
    return results


def store_original(
    store: VersionStore,
    job_id: str,
    path: Path,
    options: LoadOptions | None = None,
    data_dir: Path = Path("data"),
    work_dir: Path | None = None,
) -> VersionManifest:
    """Validate and load a user's model, then store it as the job's first version.

    Self-contained formats (ONNX, TorchScript, HF directory, a pickled module) are stored as they are;
    archives as their unpacked content. Weights that need an architecture and a config file from elsewhere
    (state dict, SafeTensors) are stored as the loaded module, so the version does not depend on files
    outside the store. The load options, with the input specs intake found, are recorded.
    """
    import tempfile

    loaded = load_model(Path(path), options, data_dir)
    base = (options or LoadOptions()).model_copy(update={"input_specs": tuple(loaded.input_specs)})
    metrics = {"original_format": loaded.format.value, "original_path": str(Path(path))}
    if loaded.format in (ModelFormat.TORCH_STATE_DICT, ModelFormat.SAFETENSORS) and loaded.module is not None:
        staging = Path(work_dir or data_dir) / "work"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as tmp:
            artifact, fmt, recorded = save_torch_module(loaded.module, Path(tmp), loaded.input_specs)
            return store.save(
                job_id,
                artifact,
                technique="intake",
                format=fmt,
                metrics=metrics,
                load_options=recorded.model_dump(mode="json"),
                move=True,
            )
    return store.save(
        job_id,
        loaded.path,
        technique="intake",
        format=loaded.format.value,
        metrics=metrics,
        load_options=base.model_dump(mode="json"),
    )
