"""Reference weights are a function of the code alone: the same sha256 under other ISAs and thread counts.

Each case builds the trained references from scratch in a fresh cache, in a process whose environment imitates
another machine: oneDNN and MKL held to AVX2 (as on CPUs without AVX-512, and MKL's branch on AMD), numpy's
AVX-512 kernels switched off, or two OpenMP threads. The pinned build (`tools.reference.reproducible`) must give
the weights recorded in `tools/reference/reference_weights.json` in every case; the unpinned kernels are shown
for contrast (they differ by ISA). Run: `pytest tests/performance/test_reference_determinism.py -s`: about a
minute on 2 cores for `reacher`, the default; ROBOPT_DETERMINISM_MODELS=reacher,conv_policy,vla adds the
others (about 2 and 9 CPU-minutes per case).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.reference.build import read_reference_metadata
from tools.reference.reproducible import DIGESTS_FILE

pytestmark = pytest.mark.performance

REPO = Path(__file__).resolve().parents[2]
CASES = {
    "native": {},
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR",
    },
    "omp2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
}
UNPINNED_SCRIPT = """
import hashlib, sys, torch
from tools.reference.reacher import ReacherTraining, train_reacher_policy
from tools.reference.reproducible import weights_digest
model, _ = train_reacher_policy(ReacherTraining())
print(torch.backends.cpu.get_cpu_capability(), weights_digest(model))
"""


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("ROBOPT_", "ATEN_", "MKL_"))
    }
    env.update(extra, PYTHONPATH=str(REPO))
    return env


def _build(name: str, cache: Path, extra: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "tools.reference", "--build", name, str(cache), "0"],
        env=_environment(extra),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    directory = Path(completed.stdout.strip().splitlines()[-1])
    return read_reference_metadata(directory)["weights_sha256"], time.perf_counter() - started


def test_pinned_reference_weights_match_the_record_under_other_isas_and_threads(tmp_path: Path) -> None:
    names = os.environ.get("ROBOPT_DETERMINISM_MODELS", "reacher").split(",")
    recorded = json.loads(DIGESTS_FILE.read_text())["sha256"]
    results: dict[str, dict[str, str]] = {}
    for case, extra in CASES.items():
        for name in names:
            digest, seconds = _build(name, tmp_path / case, extra)
            results.setdefault(name, {})[case] = digest
            print(f"\n{name:12s} {case:7s} sha256 {digest[:16]} ({seconds:.0f} s)")
    unpinned = {}
    for case in ("native", "avx2"):
        extra = {**CASES[case], "ATEN_CPU_CAPABILITY": "avx2"} if case == "avx2" else {}
        completed = subprocess.run(
            [sys.executable, "-c", UNPINNED_SCRIPT], env=_environment(extra), capture_output=True, text=True
        )
        unpinned[case] = completed.stdout.strip().splitlines()[-1] if completed.returncode == 0 else "failed"
        print(f"\nunpinned reacher {case:7s} {unpinned[case][:40]}")
    for name, digests in results.items():
        assert set(digests.values()) == {recorded[f"{name}-seed0"]}, (name, digests)
