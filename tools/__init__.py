"""Deterministic work on models: intake, profiling, techniques, measurement, targets, version store.

Nothing here knows about LLMs, graphs or HTTP; this is the part a user can script directly.
"""

from tools.torchvision_compat import allow_cuda_torchvision_on_cpu_torch

allow_cuda_torchvision_on_cpu_torch()
