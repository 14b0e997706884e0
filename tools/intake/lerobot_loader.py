"""Load a LeRobot policy directory with LeRobot's own classes: config.json, model.safetensors and processors.

The policy is built by `PreTrainedPolicy.from_pretrained` of the class for the config's `type` (weights from
SafeTensors, processors from their JSON + SafeTensors state; nothing is unpickled) and wrapped as a
`LeRobotPolicyModule`, so everything downstream sees one module from raw observations to unnormalized
actions. Loading is a pure function of the directory and the options, so a child process reloads the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from tools.errors import RoboptError, ValidationError, first_line
from tools.inputs import InputSpec
from tools.intake.detect import validate_safetensors_header
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat
from tools.log import get_logger

_log = get_logger("intake.lerobot")


def load_lerobot_policy(path: Path, options: LoadOptions) -> LoadedModel:
    """Load the LeRobot policy in directory `path` as a LeRobotPolicyModule with input specs from its features."""
    from tools.lerobot.imports import (
        import_config_class,
        import_policy_class,
        load_policy_config,
        policy_modules,
    )
    from tools.lerobot.policy_module import LeRobotPolicyModule, load_processors

    path = Path(path)
    config_dict = _read_config(path)
    policy_type = str(config_dict.get("type", ""))
    policy_modules(policy_type)  # refuse unsupported types before importing anything heavy
    validate_safetensors_header(path / "model.safetensors")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_config_class(policy_type)  # registers the type with LeRobot's config registry
    policy_class = import_policy_class(policy_type)
    try:
        with contextlib.redirect_stdout(
            io.StringIO()
        ):  # LeRobot prints progress; keep the CLI's stdout clean
            config = load_policy_config(path)  # LeRobot's from_pretrained leaves a temporary file
            _offline_cpu(config)
            policy = policy_class.from_pretrained(
                str(path), config=config, local_files_only=True, strict=True
            )
    except RoboptError:
        raise
    except Exception as exc:  # noqa: BLE001 - draccus, safetensors and torch raise many error types
        raise ValidationError(
            f"{path.name}: LeRobot cannot load this {policy_type} policy: {first_line(exc)}",
            hint="check that config.json and model.safetensors were saved together by policy.save_pretrained",
        ) from None
    preprocessor, postprocessor = load_processors(path)
    module = LeRobotPolicyModule(policy, preprocessor, postprocessor).eval()
    if not module.normalized:
        _log.warning(
            "no processor pipelines: the policy takes normalized observations",
            extra={"component": "intake.lerobot", "model_path": str(path)},
        )
    specs = list(options.input_specs) or [
        InputSpec(name=name, shape=shape, dtype="float32") for name, shape in module.input_shapes(1).items()
    ]
    facts = module.policy_facts()
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.LEROBOT_POLICY,
        options=options,
        input_specs=specs,
        module=module,
        output_names=["action"],
        config=config_dict,
        metadata={"architecture": f"LeRobot {policy_class.__name__}", "policy": facts},
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path.name}/config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValidationError(f"{path.name}/config.json is not a JSON object")
    return config


def _offline_cpu(config: Any) -> None:
    """Run on the CPU and never fetch backbone weights: model.safetensors holds every weight already."""
    config.device = "cpu"
    if hasattr(config, "pretrained_backbone_weights"):
        config.pretrained_backbone_weights = None
    if hasattr(config, "use_amp"):
        config.use_amp = False
