"""The one technique registry: config type -> handler + metadata, filled when the family modules import.

Family modules register at import and import their optional backends only inside handlers, so listing the
registry never fails for a missing package: the technique is reported unavailable with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import NotFoundError, OptimizationError, ValidationError
from tools.techniques.base import Handler, TechniqueConfig, TechniqueSpec

FAMILY_MODULES = (
    "tools.quantization",
    "tools.pruning",
    "tools.distillation",
    "tools.architecture_search",
    "tools.compression",
)
ADAPTER_MODULES = ("tools.lerobot.techniques",)
"""Model-family adapters: they sit above the generic families and register the family's own techniques.
Named here as strings and imported after the families, so no generic part imports a family."""
MEASURED_EFFECTS_FILE = Path(__file__).with_name("measured_effects.json")

C = TypeVar("C", bound=type[TechniqueConfig])


@dataclass(frozen=True)
class TechniqueEntry:
    """A registered technique: its config type, handler, metadata and an optional extra availability check."""

    config_type: type[TechniqueConfig]
    handler: Handler
    spec: TechniqueSpec
    check: Callable[[], str | None] | None = None


_REGISTRY: dict[str, TechniqueEntry] = {}


def register(
    config_type: type[TechniqueConfig], spec: TechniqueSpec, check: Callable[[], str | None] | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler` for `config_type`; `check()` returns a reason it cannot run here, or None."""
    name = config_type.model_fields["type"].default
    if not isinstance(name, str) or name != spec.name:
        raise ValueError(
            f"{config_type.__name__}.type default {name!r} must equal the spec name {spec.name!r}"
        )

    def decorate(handler: Handler) -> Handler:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.config_type is not config_type:
            raise ValueError(f"technique {name!r} is registered twice")
        _REGISTRY[name] = TechniqueEntry(config_type, handler, spec, check)
        return handler

    return decorate


@lru_cache(maxsize=1)
def load_families() -> tuple[str, ...]:
    """Import every family module, then every model-family adapter (registering their techniques); return the
    ones that imported."""
    loaded = []
    for module in (*FAMILY_MODULES, *ADAPTER_MODULES):
        if importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module)
        loaded.append(module)
    return tuple(loaded)


def techniques() -> dict[str, TechniqueEntry]:
    """Every registered technique by name."""
    load_families()
    return dict(sorted(_REGISTRY.items()))


def get_technique(name: str) -> TechniqueEntry:
    """The entry for `name`, or an error listing what is registered."""
    registry = techniques()
    if name not in registry:
        raise NotFoundError(
            f"unknown technique {name!r}; registered: {', '.join(registry)}",
            hint="run `robopt techniques` to see every technique and whether it can run here",
        )
    return registry[name]


def entry_for_config(config: TechniqueConfig) -> TechniqueEntry:
    """The entry whose config type `config` is an instance of."""
    entry = get_technique(config.type)
    if not isinstance(config, entry.config_type):
        raise ValidationError(
            f"config {type(config).__name__} claims type {config.type!r}, "
            f"registered for {entry.config_type.__name__}"
        )
    return entry


def parse_config(data: dict[str, Any] | str) -> TechniqueConfig:
    """Validate a planner's JSON (a dict or text with a `type`) into the registered config type."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"technique config is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ValidationError("a technique config must be an object with a 'type' field")
    entry = get_technique(str(data["type"]))
    try:
        return entry.config_type.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError, rendered with the bad values
        raise ValidationError(f"invalid {data['type']} config: {exc}") from None


def unavailable_reason(entry: TechniqueEntry) -> str | None:
    """Why the technique cannot run on this machine (missing package, no GPU, ...), or None if it can."""
    missing = [package for package in entry.spec.needs.packages if importlib.util.find_spec(package) is None]
    if missing:
        hint = entry.spec.needs.install_hint or f"pip install {' '.join(missing)}"
        return f"missing package {', '.join(missing)} ({hint})"
    if entry.spec.needs.gpu and not _cuda_available():
        return "needs a CUDA GPU and none is visible"
    if entry.check is not None:
        return entry.check()
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class TechniqueInfo(BaseModel):
    """What `robopt techniques` and the planner see of one technique."""

    model_config = ConfigDict(frozen=True)

    spec: TechniqueSpec
    available: bool
    reason: str | None = Field(default=None, description="Why it is unavailable here.")
    config_schema: dict[str, Any]
    measured: dict[str, Any] = Field(
        default_factory=dict, description="Effects measured by the technique benchmark, per reference model."
    )


def list_techniques() -> list[TechniqueInfo]:
    """Every technique with availability, config JSON schema and measured effects."""
    measured = measured_effects()
    infos = []
    for name, entry in techniques().items():
        reason = unavailable_reason(entry)
        infos.append(
            TechniqueInfo(
                spec=entry.spec,
                available=reason is None,
                reason=reason,
                config_schema=entry.config_type.model_json_schema(),
                measured=measured.get(name, {}),
            )
        )
    return infos


def measured_effects() -> dict[str, dict[str, Any]]:
    """Effects per technique and reference model from the last benchmark run (`measured_effects.json`)."""
    if not MEASURED_EFFECTS_FILE.is_file():
        return {}
    try:
        data = json.loads(MEASURED_EFFECTS_FILE.read_text())
    except json.JSONDecodeError as exc:
        raise OptimizationError(f"{MEASURED_EFFECTS_FILE.name} is not valid JSON: {exc}") from None
    return dict(data.get("techniques", {}))
