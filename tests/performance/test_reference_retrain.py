"""A retrain of a shipped reference on other kernel paths behaves like the shipped weights, whatever its bytes.

Each case retrains `reacher` from its recipe (`python -m tools.reference --train reacher`) in a process whose
environment imitates another machine: oneDNN, MKL and ATen held to AVX2, numpy's AVX-512 kernels off, or two
OpenMP threads. The bytes may differ from the shipped file (they do between an Intel Xeon and an AMD EPYC);
the behaviour must stay within the stated bands (`tools.reference.shipped`). Prints the figures. About 20 s a
case on 2 cores; ROBOPT_RETRAIN_MODELS=reacher,conv_policy,vla adds the others (about 2 and 8 CPU-minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("ROBOPT_", "ATEN_", "MKL_"))
    }
    env.update(extra, PYTHONPATH=str(REPO))
    return env


def test_a_retrain_on_other_kernel_paths_behaves_like_the_shipped_weights(tmp_path: Path) -> None:
    names = os.environ.get("ROBOPT_RETRAIN_MODELS", "reacher").split(",")
    for case, extra in CASES.items():
        for name in names:
            completed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tools.reference",
                    "--train",
                    name,
                    "--cache-dir",
                    str(tmp_path / case),
                ],
                env=_environment(extra),
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            print(
                f"\n{case:7s} {completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ''}"
            )
            assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
            comparison = json.loads(
                completed.stdout[completed.stdout.index("{") : completed.stdout.rindex("}") + 1]
            )
            assert comparison["accepted"] and comparison["name"] == name
