"""Train reference policies on a pinned CPU path, so that a retrain on one machine repeats itself bit for bit.

The trained references ship their weights (`tools.reference.shipped`); training is the recipe that made them,
run on purpose (`python -m tools.reference --train NAME`, `--record`). Training on the machine's fastest kernels
gives different weights from run to run of the thread pool and between ISAs, so a retrain runs in a child
process whose floating-point kernels are pinned to one code path:

- `ATEN_CPU_CAPABILITY=default`: ATen's scalar kernels, not the AVX2/AVX-512 ones picked at run time;
- `MKL_CBWR=COMPATIBLE`: MKL's conditional numerical reproducibility, one SSE2 branch on Intel and AMD alike;
- oneDNN off (`torch.backends.mkldnn`), so convolutions run as im2col plus MKL GEMM;
- one thread, so no reduction is split by the machine's core count.

That is not enough across CPU models: on an AMD EPYC the same pinned build gives other bytes than on an Intel
Xeon (numpy's OpenBLAS, MuJoCo and libm still take per-CPU paths). So bytes are never a gate: a retrain is
judged by behaviour against the shipped weights (`tools.reference.shipped.compare_behaviour`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from tools.errors import OptimizationError

REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CHILD_FLAG = "ROBOPT_REPRODUCIBLE_BUILD"
TRAINED_REFERENCES = ("vla", "conv_policy", "reacher")


def in_reproducible_process() -> bool:
    """Return whether this process was started with the pinned kernels (the child of `build_in_child`)."""
    return os.environ.get(CHILD_FLAG) == "1" and all(
        os.environ.get(name) == value for name, value in REPRODUCIBLE_ENV.items()
    )


@contextlib.contextmanager
def reproducible_kernels() -> Iterator[None]:
    """Run the block on one thread without oneDNN; refuse if ATen or MKL were not pinned at start-up."""
    capability = torch.backends.cpu.get_cpu_capability()
    if in_reproducible_process() and capability != "DEFAULT":
        raise OptimizationError(
            f"ATen runs its {capability} kernels although ATEN_CPU_CAPABILITY=default was set",
            hint="this torch build ignores ATEN_CPU_CAPABILITY; reference weights would depend on the CPU",
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(previous)


def weights_digest(model: nn.Module) -> str:
    """Return the sha256 of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def cpu_flags() -> str:
    """Return the machine's CPU model and SIMD flags (from /proc/cpuinfo), for error messages."""
    model, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = " ".join(
                    flag for flag in value.split() if flag.startswith(("avx", "sse", "fma", "amx"))
                )
    return f"{model or platform.machine()}; flags: {flags or 'unknown'}"


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries whose kernels or simulators shape the trained weights."""
    import numpy

    versions = {"torch": torch.__version__, "numpy": numpy.__version__}
    with contextlib.suppress(ImportError):
        import mujoco

        versions["mujoco"] = mujoco.__version__
    return versions


def build_in_child(name: str, cache_dir: Path, seed: int, extra_env: dict[str, str] | None = None) -> Path:
    """Build reference `name` in a child process whose kernels are pinned (see the module docstring)."""
    env = {**os.environ, **REPRODUCIBLE_ENV, CHILD_FLAG: "1", **(extra_env or {})}
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH"))))
    command = [sys.executable, "-m", "tools.reference", "--build", name, str(cache_dir), str(seed)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-12:]
        raise OptimizationError(
            f"building reference {name!r} (seed {seed}) failed:\n" + "\n".join(tail),
            hint="run `python -m tools.reference --build NAME DIR 0` to see the whole log",
        )
    return Path(completed.stdout.strip().splitlines()[-1])
