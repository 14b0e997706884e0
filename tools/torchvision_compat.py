"""Let torchvision's pure-Python parts import beside a CPU-only torch; `tools/__init__.py` applies it first.

The only torchvision wheel served for torch 2.13 (0.28, installed with robopt's lerobot extra) is a CUDA build.
On the CPU torch its `torchvision._meta_registrations` registers meta kernels for `torchvision::nms`, an op the
CPU build never defines, so `import torchvision` fails, and with it every transformers model that probes for
torchvision (BERT, Llama, ...) and LeRobot's ResNet backbones. An empty module stands in for the meta
registrations: they only serve torch.compile / meta tensors on torchvision's detection ops, which robopt never
calls. Nothing changes where torch and torchvision are a matching build.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_META = "torchvision._meta_registrations"


def allow_cuda_torchvision_on_cpu_torch() -> None:
    """Stub torchvision's meta registrations when a CUDA torchvision sits beside a CPU torch (idempotent)."""
    if "torchvision" in sys.modules or _META in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    # The wheel's metadata says 0.28.0; its version.py carries the build: '0.28.0+cu130'.
    if "+cu" not in (version_file.read_text() if version_file.is_file() else ""):
        return
    import torch

    if torch.version.cuda is None:
        sys.modules[_META] = types.ModuleType(_META)
