"""Helpers for the pruning tests: a module-scoped store holding the reference VLA, an ONNX version to refuse,
in-process latency compared by interleaved runs, and fidelity to the original on held-out task inputs."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.technique_support import store_reference
from tools.intake import LoadOptions
from tools.reference import build_reference, read_reference_metadata
from tools.techniques import store_original
from tools.versions import VersionManifest, VersionStore


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


def store_module(
    store: VersionStore, job_id: str, module: torch.nn.Module, specs: list, work: Path, data_dir: Path
) -> VersionManifest:
    """Store an in-memory module (whole, pickled) as the first version of `job_id`."""
    path = work / f"{job_id}.pt"
    torch.save(module.eval(), path)
    return store_original(
        store, job_id, path, LoadOptions(trust_pickle=True, input_specs=tuple(specs)), data_dir
    )


def interleaved_p50_ms(
    original: torch.nn.Module, candidate: torch.nn.Module, inputs: dict[str, torch.Tensor], runs: int = 40
) -> tuple[float, float]:
    """Median batch-1 latency (ms) of two modules timed in alternation on 1 thread, so load bursts hit both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: tuple[list[float], list[float]] = ([], [])
    try:
        with torch.inference_mode():
            for module in (original, candidate):
                for _ in range(5):
                    module(**inputs)
            for _ in range(runs):
                for index, module in enumerate((original, candidate)):
                    start = time.perf_counter()
                    module(**inputs)
                    times[index].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def faster(
    original: torch.nn.Module, candidate: torch.nn.Module, inputs: dict[str, torch.Tensor], attempts: int = 3
) -> list[tuple[float, float]]:
    """Time both (interleaved medians of 40 runs) until the candidate is faster, at most `attempts` rounds.

    Other processes share this machine's cores; a round is repeated only when a burst of their load made
    the candidate look slower. Returns every round's (original p50, candidate p50).
    """
    rounds = []
    for _ in range(attempts):
        rounds.append(interleaved_p50_ms(original, candidate, inputs))
        if rounds[-1][1] < rounds[-1][0]:
            break
    return rounds


def mean_cosine(
    original: torch.nn.Module, candidate: torch.nn.Module, batches: list[dict[str, torch.Tensor]]
) -> float:
    """Mean per-sample cosine similarity of the candidate's actions to the original's."""
    values = []
    with torch.inference_mode():
        for batch in batches:
            expected = original(**batch).flatten(1)
            got = candidate(**batch).flatten(1)
            values.append(torch.nn.functional.cosine_similarity(expected, got, dim=1))
    return float(torch.cat(values).mean())
