"""Baselines robopt must beat, run on the same models in the same run: no optimization, and what a user would
do by hand in one shot (each technique with its defaults, no search, no tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals.bench import Bench, Measured


@dataclass(frozen=True)
class Baseline:
    """A named one-shot recipe: a chain of technique configs with their defaults."""

    name: str
    label: str
    steps: tuple[dict[str, Any], ...]


BASELINES: tuple[Baseline, ...] = (
    Baseline("fp32_eager", "FP32, PyTorch eager (no optimization)", ()),
    Baseline("fp32_onnxruntime", "FP32, ONNX Runtime", ({"type": "onnx_export"},)),
    Baseline("ort_int8_dynamic", "ONNX Runtime dynamic INT8, defaults", ({"type": "ort_int8_dynamic"},)),
    Baseline("torchao_int8_wo", "torchao int8 weight-only", ({"type": "torchao_int8_weight_only"},)),
    Baseline("fp16_cast", "FP16 cast (PyTorch)", ({"type": "torch_fp16_cast"},)),
    Baseline("bf16_cast", "BF16 cast (PyTorch)", ({"type": "torch_bf16_cast"},)),
)
BASELINE_NAMES: tuple[str, ...] = tuple(b.name for b in BASELINES)


def run_baselines(bench: Bench) -> dict[str, Measured]:
    """Measure every baseline on the bench (the original first: it is the reference for every ratio)."""
    results: dict[str, Measured] = {}
    for baseline in BASELINES:
        steps = [dict(step) for step in baseline.steps]
        if not steps:
            results[baseline.name] = bench.measure_original()
        else:
            results[baseline.name] = bench.candidate(baseline.name, "baseline", steps)
    return results
