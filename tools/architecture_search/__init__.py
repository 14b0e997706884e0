"""Architecture search: a search space derived from the model, weight-sliced candidates, multi-objective optuna search.

Each submodule registers its techniques in `tools.techniques.registry` when imported; optional backends
are imported inside the handlers only.
"""

from tools.architecture_search import search  # noqa: F401  (registers techniques)
from tools.architecture_search import slicing  # noqa: F401  (registers techniques)
from tools.architecture_search import space  # noqa: F401  (registers techniques)
