"""LeRobot policies inside robopt: the import shims, the policy-as-module wrapper and the policy facts.

LeRobot is an optional extra installed without its pins (it pins torch<2.11 and transformers<5); every
import of LeRobot code goes through `tools.lerobot.imports`, which installs the two shims that let its
policy modules run beside robopt's torch and transformers. Nothing here imports LeRobot at import time.
"""

from __future__ import annotations

from tools.lerobot.imports import (
    SUPPORTED_POLICY_TYPES,
    UNSUPPORTED_POLICY_TYPES,
    import_config_class,
    import_policy_class,
    import_processor_factory,
    lerobot_available,
)

__all__ = [
    "SUPPORTED_POLICY_TYPES",
    "UNSUPPORTED_POLICY_TYPES",
    "import_config_class",
    "import_policy_class",
    "import_processor_factory",
    "lerobot_available",
]
