"""Helpers for technique tests: put reference models in a version store, load versions back, compare outputs
and time models against each other."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tools.intake import LoadedModel, LoadOptions
from tools.reference import build_reference, read_reference_metadata, reference_model_file
from tools.reference.calibration import reaching_calibration
from tools.techniques import load_version, output_agreement, run_outputs, store_original
from tools.versions import VersionManifest, VersionStore


def store_reference(
    store: VersionStore, name: str, reference_cache: Path, data_dir: Path, job_id: str | None = None
) -> VersionManifest:
    """Build (or find) reference `name` and store it as the first version of job `job_id` (default: name)."""
    path, options = reference_model_file(name, reference_cache)
    return store_original(store, job_id or name, path, options, data_dir)


def reference_store(
    tmp_path_factory: pytest.TempPathFactory, reference_cache: Path, name: str, *models: str
) -> SimpleNamespace:
    """A fresh data dir and store holding reference `models` as the first version of jobs named after them."""
    data_dir = tmp_path_factory.mktemp(name) / "data"
    data_dir.mkdir()
    store = VersionStore(data_dir / "versions")
    versions = {model: store_reference(store, model, reference_cache, data_dir) for model in models}
    return SimpleNamespace(store=store, data_dir=data_dir, versions=versions)


def store_vla_onnx(store: VersionStore, reference_cache: Path, data_dir: Path) -> VersionManifest:
    """Store the reference VLA's ONNX export as a version (what eager-module techniques must refuse)."""
    directory = build_reference("vla", reference_cache)
    onnx_file = directory / read_reference_metadata(directory)["formats"]["onnx"]
    return store_original(store, "vla-onnx", onnx_file, LoadOptions(), data_dir)


def load(store: VersionStore, version: VersionManifest, data_dir: Path) -> LoadedModel:
    """Load a stored version back (checksum verified)."""
    return load_version(store, version.job_id, version.id, data_dir)


def outputs(model: LoadedModel, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """All output tensors of one forward pass."""
    return run_outputs(model, inputs)


def held_out_inputs(specs: list | None = None, batches: int = 2) -> list[dict[str, torch.Tensor]]:
    """Reaching-task observations never used for training or calibration (seed 7000, batches of 16), keyed by
    the inputs of `specs` when given."""
    data = reaching_calibration(batches, 16, seed=7000, with_labels=False)
    if specs is None:
        return data.batches
    return [{spec.name: batch[spec.name] for spec in specs} for batch in data.batches]


def min_cosine(reference: LoadedModel, model: LoadedModel, inputs: list[dict[str, torch.Tensor]]) -> float:
    """The lowest cosine of any output of `model` against `reference`'s over the input batches."""
    return min(
        agreement.cosine
        for batch in inputs
        for agreement in output_agreement(outputs(reference, batch), outputs(model, batch))
    )


def weight_rounding_cosine(
    model: LoadedModel, dtype: torch.dtype, inputs: list[dict[str, torch.Tensor]]
) -> float:
    """The lowest output cosine of `model` against itself with its weights rounded to `dtype`.

    What rounding the weights alone costs this model: the baseline a cast to `dtype` is measured against (math
    in float32, norm layers untouched as the casts keep them). The weights are restored afterwards.
    """
    from tools.quantization.torch_cast import is_norm_layer

    reference = [outputs(model, batch) for batch in inputs]
    saved = {name: tensor.clone() for name, tensor in model.module.state_dict().items()}
    try:
        with torch.no_grad():
            for module in model.module.modules():
                for parameter in module.parameters(recurse=False):
                    if parameter.is_floating_point() and not is_norm_layer(module):
                        parameter.copy_(parameter.to(dtype).to(parameter.dtype))
            rounded = [outputs(model, batch) for batch in inputs]
    finally:
        model.module.load_state_dict(saved)
    return min(
        agreement.cosine for ref, new in zip(reference, rounded) for agreement in output_agreement(ref, new)
    )


def policy_actions(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The policy's actions for every batch, concatenated."""
    with torch.inference_mode():
        return torch.cat([model(**batch) for batch in batches])


def tensor_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened."""
    return output_agreement([reference], [candidate])[0].cosine


def interleaved_median_ms(
    models: list[nn.Module], inputs: dict[str, torch.Tensor], runs: int = 25, warmup: int = 3
) -> list[float]:
    """Median ms of each model on the current threads, runs interleaved so load noise hits all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            for _ in range(warmup):
                model(**inputs)
        for _ in range(runs):
            for index, model in enumerate(models):
                start = time.perf_counter()
                model(**inputs)
                times[index].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(series) for series in times]
