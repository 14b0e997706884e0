"""The one place that imports LeRobot: lazy, per policy type, behind two shims for robopt's versions.

LeRobot 0.4.4 is installed as an optional extra without its pins (torch<2.11, transformers<5), so two of its
import paths break beside robopt's torch 2.13 / transformers 5 and are shimmed here:

- torchvision 0.28 (the only wheel served here) is a CUDA build whose meta registrations fail on the CPU torch;
  `tools.torchvision_compat` (applied when `tools` is imported, and again here) stubs them. ACT, Diffusion and
  VQ-BeT use only torchvision's pure-Python ResNet, IntermediateLayerGetter and FrozenBatchNorm2d.
- `lerobot/policies/__init__.py` imports every policy's config, GR00T's among them, which fails under
  transformers 5. A bare package module with the real folder as `__path__` stands in for it, so that
  `lerobot.policies.act.modeling_act` and its siblings import directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import MissingDependencyError, UnsupportedFormatError
from tools.torchvision_compat import allow_cuda_torchvision_on_cpu_torch

INSTALL_HINT = (
    "install robopt's lerobot extra: `python3 run_robopt.py` installs it (LeRobot 0.4.4 with --no-deps beside "
    "torch 2.13); by hand: pip install --no-deps lerobot==0.4.4 torchvision==0.28.0 draccus==0.10.0 "
    "'datasets>=4,<5'"
)


@dataclass(frozen=True)
class PolicyModules:
    """Where LeRobot keeps one policy type: its config, modeling and processor modules and their names."""

    config_module: str
    config_class: str
    modeling_module: str
    policy_class: str
    processor_module: str
    processor_factory: str


SUPPORTED_POLICY_TYPES: dict[str, PolicyModules] = {
    "act": PolicyModules(
        "lerobot.policies.act.configuration_act",
        "ACTConfig",
        "lerobot.policies.act.modeling_act",
        "ACTPolicy",
        "lerobot.policies.act.processor_act",
        "make_act_pre_post_processors",
    ),
    "diffusion": PolicyModules(
        "lerobot.policies.diffusion.configuration_diffusion",
        "DiffusionConfig",
        "lerobot.policies.diffusion.modeling_diffusion",
        "DiffusionPolicy",
        "lerobot.policies.diffusion.processor_diffusion",
        "make_diffusion_pre_post_processors",
    ),
    "vqbet": PolicyModules(
        "lerobot.policies.vqbet.configuration_vqbet",
        "VQBeTConfig",
        "lerobot.policies.vqbet.modeling_vqbet",
        "VQBeTPolicy",
        "lerobot.policies.vqbet.processor_vqbet",
        "make_vqbet_pre_post_processors",
    ),
}

# Policy types LeRobot has that robopt refuses, each with the reason (measured with LeRobot 0.4.4 here).
UNSUPPORTED_POLICY_TYPES: dict[str, str] = {
    "pi0": "LeRobot's pi0 needs its own fork of transformers (Gemma with adaRMS conditioning, "
    "`modeling_gemma._gated_residual`), which transformers 5 does not have",
    "pi05": "LeRobot's pi05 needs its own fork of transformers (Gemma with adaRMS conditioning), which "
    "transformers 5 does not have",
    "pi0_fast": "LeRobot's pi0_fast needs its own fork of transformers and the PaliGemma tokenizer from the Hub",
    "smolvla": "SmolVLA builds its backbone from the SmolVLM2 config and processor on the Hugging Face Hub "
    "(`vlm_model_name`), which an offline machine cannot fetch",
    "groot": "GR00T's LeRobot code does not import under transformers 5",
    "xvla": "X-VLA needs Hub-hosted backbone code and a transformers<5 API",
    "wall_x": "WALL-OSS needs Hub-hosted Qwen2.5-VL weights and a transformers<5 API",
    "tdmpc": "TD-MPC is a model-based RL policy whose action comes from planning, not one network forward",
    "sac": "SAC is an RL actor-critic trained online; export its actor as a plain module instead",
    "sarm": "SARM is a reward model, not a policy",
}


def lerobot_available() -> bool:
    """Whether the lerobot package is installed (without importing it)."""
    return importlib.util.find_spec("lerobot") is not None


def policy_modules(type_name: str) -> PolicyModules:
    """The module names for a policy type; refuse an unsupported or unknown type with the supported list."""
    key = str(type_name).strip().lower()
    if key in SUPPORTED_POLICY_TYPES:
        return SUPPORTED_POLICY_TYPES[key]
    supported = ", ".join(sorted(SUPPORTED_POLICY_TYPES))
    if key in UNSUPPORTED_POLICY_TYPES:
        raise UnsupportedFormatError(
            f"LeRobot policy type {key!r} is not supported: {UNSUPPORTED_POLICY_TYPES[key]}",
            hint=f"robopt loads LeRobot policies of type {supported}",
            detail={"policy_type": key, "supported": sorted(SUPPORTED_POLICY_TYPES)},
        )
    raise UnsupportedFormatError(
        f"unknown LeRobot policy type {key!r}",
        hint=f"robopt loads LeRobot policies of type {supported}",
        detail={"policy_type": key, "supported": sorted(SUPPORTED_POLICY_TYPES)},
    )


def import_policy_class(type_name: str) -> type:
    """The LeRobot policy class (a `PreTrainedPolicy`) for a config `type` such as "act"."""
    modules = policy_modules(type_name)
    return getattr(import_lerobot_module(modules.modeling_module), modules.policy_class)


def import_config_class(type_name: str) -> type:
    """The LeRobot config class (a `PreTrainedConfig`) for a config `type` such as "act"."""
    modules = policy_modules(type_name)
    return getattr(import_lerobot_module(modules.config_module), modules.config_class)


def load_policy_config(directory: Path) -> Any:
    """LeRobot's `PreTrainedConfig.from_pretrained` for a local policy directory, leaving no temporary file.

    LeRobot 0.4.4's own copies config.json, less its `type`, to a `NamedTemporaryFile(delete=False)` that it
    never removes: one `tmp*.json` in the temp folder per load. This parses the same copy the same way (draccus,
    with the config class registered for the type) from a temporary folder removed on every path.
    """
    raw = json.loads((Path(directory) / "config.json").read_text())
    config_class = import_config_class(str(raw.pop("type", "")))
    draccus = import_lerobot_module("draccus")
    with tempfile.TemporaryDirectory(prefix="robopt-lerobot-config-") as scratch:
        copy = Path(scratch) / "config.json"
        copy.write_text(json.dumps(raw))
        with draccus.config_type("json"):
            return draccus.parse(config_class, str(copy), args=[])


def load_policy(directory: Path, config: Any = None, **kwargs: Any) -> Any:
    """LeRobot's `PreTrainedPolicy.from_pretrained(directory)` for the directory's policy type, its config read
    by `load_policy_config` (LeRobot's own config loader leaves a temporary file) unless one is given."""
    if config is None:
        config = load_policy_config(directory)
    return import_policy_class(str(config.type)).from_pretrained(str(directory), config=config, **kwargs)


def import_processor_factory(type_name: str) -> Any:
    """LeRobot's `make_<type>_pre_post_processors(config, dataset_stats)` for a policy type."""
    modules = policy_modules(type_name)
    return getattr(import_lerobot_module(modules.processor_module), modules.processor_factory)


def import_lerobot_module(name: str) -> types.ModuleType:
    """Import a `lerobot.*` module after installing the shims; raise MissingDependencyError when absent."""
    if not lerobot_available():
        raise MissingDependencyError(
            "loading a LeRobot policy needs the lerobot package, which is not installed", hint=INSTALL_HINT
        )
    install_shims()
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise MissingDependencyError(
            f"LeRobot's {name} cannot be imported: {str(exc).splitlines()[0] if str(exc) else missing}",
            hint=INSTALL_HINT,
            detail={"module": name, "missing": missing},
        ) from None


def install_shims() -> None:
    """Make torchvision and `lerobot.policies` importable beside robopt's torch and transformers (idempotent).

    Also called before unpickling a robopt-written module that references LeRobot classes.
    """
    if not lerobot_available():
        return
    allow_cuda_torchvision_on_cpu_torch()
    if "lerobot.policies" in sys.modules:
        return
    import lerobot

    package = types.ModuleType("lerobot.policies")
    package.__path__ = [str(Path(lerobot.__file__).parent / "policies")]
    package.__package__ = "lerobot.policies"
    sys.modules["lerobot.policies"] = package
    lerobot.policies = package  # type: ignore[attr-defined]
