"""Baselines robopt must beat, run on the same models in the same run: no optimization, and what a user would
do by hand in one shot (each technique with its defaults, no search, no tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals.bench import Bench, Measured
from evals.scenarios import Fusion, Setup


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
"""The baselines every setup has."""

FUSION_STEPS: dict[Fusion, dict[str, Any]] = {
    # ONNX Runtime's offline optimizer at ORT_ENABLE_ALL (Conv+BN folding, Conv+activation fusion, NCHWc layout),
    # the optimized graph stored as the artifact: what Olive's session-level optimization writes for a CNN
    "session": {"type": "onnx_export", "graph_optimization_level": "all", "save_optimized": True},
    # ONNX Runtime's transformer optimizer (Attention, LayerNorm, GELU fusions), as Olive runs it
    "transformer": {"type": "ort_transformer_fusion"},
}
FUSED_BASELINE_NAMES: tuple[str, ...] = ("fp32_onnx_fused", "fused_ort_int8_dynamic")
"""The Olive-style baselines a setup with a `fusion` adds."""


def fused_baselines(fusion: Fusion) -> tuple[Baseline, ...]:
    """Olive-style baselines: the fused FP32 graph, and ONNX Runtime's dynamic INT8 (defaults) of that graph."""
    fused = FUSION_STEPS[fusion]
    what = "ORT_ENABLE_ALL, saved optimized" if fusion == "session" else "ORT transformer fusion"
    return (
        Baseline(FUSED_BASELINE_NAMES[0], f"FP32 ONNX, fused (Olive-style: {what})", (fused,)),
        Baseline(
            FUSED_BASELINE_NAMES[1],
            "fused + ONNX Runtime dynamic INT8, defaults",
            (fused, {"type": "ort_int8_dynamic"}),
        ),
    )


def baselines_for(setup: Setup) -> tuple[Baseline, ...]:
    """The setup's baselines: every setup's one-liners, then the fused ones when the setup names a fusion."""
    return BASELINES + (fused_baselines(setup.fusion) if setup.fusion else ())


def run_baselines(bench: Bench) -> dict[str, Measured]:
    """Measure every baseline on the bench (the original first: it is the reference for every ratio); a chain
    continues from its cached first steps (the fused graph is made once)."""
    results: dict[str, Measured] = {}
    for baseline in baselines_for(bench.setup):
        steps = [dict(step) for step in baseline.steps]
        if not steps:
            results[baseline.name] = bench.measure_original()
        else:
            results[baseline.name] = bench.candidate(baseline.name, "baseline", steps, steps[:-1] or None)
    return results
