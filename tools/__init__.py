"""Deterministic work on models: intake, profiling, techniques, measurement, targets, version store.

Nothing here knows about LLMs, graphs or HTTP; this is the part a user can script directly.
"""

from tools.lerobot.imports import install_torchvision_shim as _install_torchvision_shim

_install_torchvision_shim()  # before transformers or LeRobot import the CUDA-only torchvision build
