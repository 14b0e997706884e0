"""Compression techniques: low-rank factorization, weight clustering, ONNX export with parity and offline graph optimization.

Each submodule registers its techniques in `tools.techniques.registry` when imported; optional backends
are imported inside the handlers only.
"""

from tools.compression import clustering  # noqa: F401  (registers techniques)
from tools.compression import lowrank  # noqa: F401  (registers techniques)
from tools.compression import onnx_export  # noqa: F401  (registers techniques)
from tools.compression import transformer_fusion  # noqa: F401  (registers techniques)
