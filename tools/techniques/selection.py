"""Which modules a technique touches: module-name patterns, the modules they protect, and the plain Linear
layers a weight transform may replace, with the reason each other Linear layer is left alone.

A pattern is an fnmatch glob on qualified module names ('action_head', '*lm_head*') or a regular expression
after 're:' ('re:blocks\\.0\\.'); a module matching one protects every module inside it.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Iterable

from pydantic import Field, field_validator
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from tools.techniques.base import TechniqueConfig

REGEX_PREFIX = "re:"
PROTECTED_DESCRIPTION = (
    "Module-name patterns left untouched with everything inside them: fnmatch globs on qualified names "
    "('action_head', 'action_head*', '*embed*'), or a regular expression after 're:' ('re:blocks\\.0\\.')."
)


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse blank patterns and regular expressions that do not compile (a pydantic field validator body)."""
    for pattern in patterns:
        if not pattern.strip():
            raise ValueError(
                "module name patterns must be non-empty glob patterns such as 'action_head' or "
                "regular expressions after 're:'"
            )
        if pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(pattern[len(REGEX_PREFIX) :])
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}")
    return patterns


def pattern_matches(name: str, pattern: str) -> bool:
    """Whether qualified module name `name` itself matches one glob or 're:'-regex pattern."""
    if pattern.startswith(REGEX_PREFIX):
        return re.search(pattern[len(REGEX_PREFIX) :], name) is not None
    return fnmatchcase(name, pattern)


def is_protected(name: str, patterns: Iterable[str]) -> bool:
    """Whether module `name` or one of the modules containing it matches a pattern."""
    parts = name.split(".") if name else []
    scopes = [".".join(parts[: index + 1]) for index in range(len(parts))]
    patterns = tuple(patterns)
    return any(pattern_matches(scope, pattern) for scope in scopes for pattern in patterns)


def protected_module_names(model: nn.Module, patterns: Iterable[str]) -> set[str]:
    """Names of every module covered by `patterns` (a match protects all the modules inside it)."""
    patterns = tuple(patterns)
    if not patterns:
        return set()
    return {name for name, _ in model.named_modules() if name and is_protected(name, patterns)}


def unmatched_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Patterns that match no module name (likely typos: reported in the facts, not fatal)."""
    names = [name for name, _ in model.named_modules() if name]
    return [pattern for pattern in patterns if not any(is_protected(name, (pattern,)) for name in names)]


def select_linear_layers(
    model: nn.Module, protected: tuple[str, ...], protect_output_layer: bool, min_layer_params: int = 0
) -> tuple[list[tuple[str, nn.Linear]], dict[str, str]]:
    """Split the model's plain `nn.Linear` layers into (eligible, {name: why it is left alone}).

    Left alone: protected ones, the output layer (the last Linear registered) when asked, layers whose
    weight is tied to another parameter, already quantized weights, and weights under `min_layer_params`.
    """
    linears = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    owners: dict[int, int] = {}
    for _name, parameter in model.named_parameters(remove_duplicate=False):
        owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    output_name = linears[-1][0] if linears else None
    eligible, skipped = [], {}
    for name, linear in linears:
        if is_protected(name, protected):
            skipped[name] = "protected: matches a protected name pattern"
        elif protect_output_layer and name == output_name:
            skipped[name] = "protected: the model's output layer"
        elif owners.get(id(linear.weight), 0) > 1:
            skipped[name] = "tied: its weight is shared with another parameter"
        elif not linear.weight.is_floating_point() or is_traceable_wrapper_subclass(linear.weight):
            skipped[name] = f"already quantized: its weight is {type(linear.weight).__name__}"
        elif linear.weight.numel() < min_layer_params:
            skipped[name] = (
                f"too small: {linear.weight.numel()} weights < min_layer_params {min_layer_params}"
            )
        else:
            eligible.append((name, linear))
    return eligible, skipped


def reason_summary(skipped: dict[str, str]) -> str:
    """Count skip reasons by their category (the text before ':'), e.g. '3 no saving; 1 protected'."""
    counts: dict[str, int] = {}
    for reason in skipped.values():
        category = reason.split(":", 1)[0]
        counts[category] = counts.get(category, 0) + 1
    return "; ".join(f"{count} {category}" for category, count in sorted(counts.items()))


class ProtectedModulesConfig(TechniqueConfig):
    """Base of configs whose technique leaves modules matching `protected` untouched."""

    protected: tuple[str, ...] = Field(default=(), description=PROTECTED_DESCRIPTION)

    @field_validator("protected")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_patterns(value)


class ProtectedLayersConfig(ProtectedModulesConfig):
    """Base of configs that replace Linear layers: protected patterns, and the output layer kept as it is.

    The defaults and descriptions are the quantizers'; a family that differs redeclares the field.
    """

    protected: tuple[str, ...] = Field(
        default=("*lm_head*",),
        description="Glob patterns (fnmatch) of qualified module names left in float32 with everything "
        "inside them, e.g. 'action_head' to keep the whole action head.",
        json_schema_extra={"search": [["*lm_head*"], ["*lm_head*", "action_head"]]},
    )
    protect_output_layer: bool = Field(
        default=True,
        description="Leave the model's last Linear layer (the action or logits output) in float32.",
    )
