"""Pruning techniques: unstructured magnitude, structured (channels, heads, MLP neurons), transformer depth.

Each submodule registers its techniques in `tools.techniques.registry` when imported; optional backends
are imported inside the handlers only.
"""

from tools.pruning import depth  # noqa: F401  (registers techniques)
from tools.pruning import structured  # noqa: F401  (registers techniques)
from tools.pruning import unstructured  # noqa: F401  (registers techniques)
