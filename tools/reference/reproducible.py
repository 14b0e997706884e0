"""Train reference policies on a bit-reproducible CPU path, so their weights are a function of the code alone.

Training on the machine's fastest kernels gives different weights on different CPUs (AVX-512 and AVX2 kernels
sum in different orders; MKL picks its code path per CPU, and per CPU vendor). A reference policy is therefore
trained in a child process whose every floating-point kernel is pinned to one code path:

- `ATEN_CPU_CAPABILITY=default`: ATen's scalar kernels, not the AVX2/AVX-512 ones picked at run time;
- `MKL_CBWR=COMPATIBLE`: MKL's conditional numerical reproducibility, one SSE2 branch on Intel and AMD alike;
- oneDNN off (`torch.backends.mkldnn`), so convolutions run as im2col plus MKL GEMM;
- one thread, so no reduction is split by the machine's core count.

The sha256 of the weights that path produces is recorded in `reference_weights.json` beside this file; a build
whose weights differ fails loudly, naming the machine's CPU flags. `python -m tools.reference --record`
rebuilds the trained references and rewrites that record (after a deliberate change to the training code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from tools.errors import CorruptFileError, OptimizationError
from tools.log import get_logger

logger = get_logger("reference")

DIGESTS_FILE = Path(__file__).resolve().parent / "reference_weights.json"
REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CHILD_FLAG = "ROBOPT_REPRODUCIBLE_BUILD"
RECORD_FLAG = "ROBOPT_RECORD_REFERENCE_DIGESTS"
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


def _record(record_file: Path) -> dict:
    try:
        record = json.loads(record_file.read_text())
        record["sha256"], record["versions"]
        return record
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise CorruptFileError(f"{record_file} is missing or unreadable: {exc}") from None


def check_weights(name: str, seed: int, model: nn.Module, record_file: Path = DIGESTS_FILE) -> str:
    """Compare a trained reference's weights with the recorded sha256; raise, naming the CPU, if they differ.

    Seeds other than the recorded ones are only reported. With ROBOPT_RECORD_REFERENCE_DIGESTS=1 the digest is
    written into the record instead (the `--record` command).
    """
    digest, key = weights_digest(model), f"{name}-seed{seed}"
    if os.environ.get(RECORD_FLAG) == "1":
        record = json.loads(record_file.read_text()) if record_file.is_file() else {"sha256": {}}
        record["sha256"][key] = digest
        record["versions"] = library_versions()
        record_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        logger.info("recorded %s weights sha256 %s", key, digest, extra={"component": "reference"})
        return digest
    record = _record(record_file)
    expected = record["sha256"].get(key)
    if expected is not None and record["versions"] != library_versions():
        logger.warning(
            "reference %s: weights recorded with %s, built with %s; not comparing sha256",
            key,
            record["versions"],
            library_versions(),
            extra={"component": "reference"},
        )
    elif expected is not None and expected != digest:
        raise OptimizationError(
            f"reference {key} trained to weights with sha256 {digest}, but the code must produce {expected} "
            f"({library_versions()}, pinned kernels: {in_reproducible_process()}); "
            f"this CPU takes a different floating-point path: {cpu_flags()}",
            hint="report the CPU flags above; if the training code changed on purpose, run "
            "`python -m tools.reference --record` and commit reference_weights.json",
        )
    return digest


def build_in_child(name: str, cache_dir: Path, seed: int) -> Path:
    """Build reference `name` in a child process whose kernels are pinned (see the module docstring)."""
    env = {**os.environ, **REPRODUCIBLE_ENV, CHILD_FLAG: "1"}
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
