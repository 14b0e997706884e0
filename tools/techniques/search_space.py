"""One search space: candidate chains built from the registry and the `search` ranges its configs declare.

The improvement search (`agents.planning_rules`) and the evals' oracle (`evals.oracle`) both draw chains from
here, so the planner and the oracle search the same space. A step's variants vary one declared field at a time
around the defaults (each validated by the config type; invalid combinations are dropped). A chain holds 1-3
steps, each taking the previous step's output format, in stage order: one structural step (pruning,
compression, architecture search), distillation only right after it, export steps, then at most one
quantization / precision step. Every technique left out comes with its reason.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from tools.errors import RoboptError
from tools.techniques.base import Family, TechniqueSpec
from tools.techniques.registry import get_technique, parse_config, techniques, unavailable_reason

Stage = Literal["structural", "distill", "export", "precision"]
STAGE_ORDER: dict[Stage, int] = {"structural": 0, "distill": 1, "export": 2, "precision": 3}
STAGE_OF_FAMILY: dict[Family, Stage] = {
    Family.PRUNING: "structural",
    Family.COMPRESSION: "structural",
    Family.ARCHITECTURE_SEARCH: "structural",
    Family.DISTILLATION: "distill",
    Family.EXPORT: "export",
    Family.QUANTIZATION: "precision",
}
WALL_TIME_PARAMETERS = ("time_budget_s",)
"""Fields derived from the time left: chains differing only in them are the same chain, here and in the planner's
`same_steps` (a rejected prune + distill was otherwise retried with a new distillation budget until the attempts
ran out)."""

Step = dict[str, Any]
Chain = list[Step]


@dataclass(frozen=True)
class CandidateSpace:
    """The chains to consider from one source format, and why each technique left out of them is."""

    source_format: str
    chains: list[Chain] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    def techniques(self) -> set[str]:
        """Every technique some chain uses."""
        return {str(step["type"]) for chain in self.chains for step in chain}


def stage_of(spec: TechniqueSpec) -> Stage:
    """Where the technique's family sits in a chain."""
    return STAGE_OF_FAMILY[spec.family]


def search_ranges(name: str) -> dict[str, list[Any]]:
    """The technique's declared `search` ranges by field, in the config's field order."""
    properties = get_technique(name).config_type.model_json_schema().get("properties", {})
    return {key: list(prop["search"]) for key, prop in properties.items() if prop.get("search")}


def canonical_step(step: Step) -> str:
    """The step as a key: defaults filled in, wall-time budgets left out (unparseable steps as given)."""
    try:
        dumped = parse_config(step).model_dump(mode="json")
    except RoboptError:
        dumped = dict(step)
    return json.dumps(
        {k: v for k, v in dumped.items() if k not in WALL_TIME_PARAMETERS}, sort_keys=True, default=str
    )


def canonical_chain(chain: Iterable[Step]) -> tuple[str, ...]:
    """The chain as a key with the semantics of `agents.planning.same_steps`."""
    return tuple(canonical_step(step) for step in chain)


def step_variants(name: str, limit: int | None = None, base: Step | None = None) -> list[Step]:
    """The technique's configs: `base` (the defaults, with the caller's overrides) first, then one declared
    field changed at a time to each value of its range, taking the fields in turn (the first value of every
    field before the second of any), so a small `limit` still varies every field. Invalid configs and repeats
    are dropped; an invalid `base` yields no variant."""
    start: Step = {**(base or {}), "type": name}
    try:
        parse_config(start)
    except RoboptError:
        return []
    ranges = search_ranges(name)
    found: list[Step] = [start]
    seen = {canonical_step(start)}
    columns = [[(key, value) for value in values] for key, values in ranges.items()]
    for row in itertools.zip_longest(*columns):
        for cell in row:
            if cell is None:
                continue
            key, value = cell
            variant = {**start, key: value}
            try:
                parse_config(variant)
            except RoboptError:
                continue
            canonical = canonical_step(variant)
            if canonical not in seen:
                seen.add(canonical)
                found.append(variant)
    return found[:limit] if limit is not None else found


def _follows(chain: list[TechniqueSpec], spec: TechniqueSpec) -> bool:
    """Whether `spec` may come next in the chain's stage order."""
    stage = stage_of(spec)
    if any(prior.name == spec.name for prior in chain):
        return False
    if stage == "distill":
        return bool(chain) and stage_of(chain[-1]) == "structural"
    if chain and STAGE_ORDER[stage] < STAGE_ORDER[stage_of(chain[-1])]:
        return False
    return not (stage in ("structural", "precision") and any(stage_of(prior) == stage for prior in chain))


def _redundant_export(previous: TechniqueSpec, spec: TechniqueSpec, before: str) -> bool:
    """An export that changes the format, followed by a step that would make that export itself from the same
    input: the pair measures as the second step alone (an exporting step's registry figure includes it)."""
    return (
        stage_of(previous) == "export"
        and previous.output_format != before
        and before in spec.input_formats
        and spec.output_format == previous.output_format
    )


def technique_chains(
    source_format: str, names: Iterable[str], max_steps: int = 3
) -> list[list[TechniqueSpec]]:
    """Every chain of 1..max_steps of the named techniques that is format-compatible and in stage order,
    shortest first, then in stage and name order."""
    specs = sorted(
        (get_technique(name).spec for name in names), key=lambda s: (STAGE_ORDER[stage_of(s)], s.name)
    )
    chains: list[list[TechniqueSpec]] = []
    frontier: list[tuple[list[TechniqueSpec], list[str]]] = [([], [source_format])]
    for _ in range(max_steps):
        grown = []
        for chain, formats in frontier:
            for spec in specs:
                if formats[-1] not in spec.input_formats or not _follows(chain, spec):
                    continue
                if chain and _redundant_export(chain[-1], spec, formats[-2]):
                    continue
                grown.append((chain + [spec], formats + [spec.output_format]))
        chains += [chain for chain, _ in grown]
        frontier = grown
    return chains


def candidate_chains(
    source_format: str,
    *,
    max_steps: int = 3,
    tried: Iterable[Iterable[Step]] = (),
    exclude: dict[str, str] | None = None,
    variants_per_step: int = 1,
    only: Iterable[str] | None = None,
    base_configs: dict[str, Step] | None = None,
) -> CandidateSpace:
    """Chains of 1..max_steps available techniques from `source_format`, not already `tried` (same configs,
    wall-time budgets ignored). Each technique chain comes with its defaults (`base_configs` overrides them),
    then with one step at a time set to its other variants (up to `variants_per_step` per step, the defaults
    included). `exclude` ({name: reason}) and `only` (a selection) narrow the techniques; every technique
    left out is in `excluded` with its reason."""
    excluded: dict[str, str] = {}
    selection = set(only) if only is not None else None
    usable = []
    for name, entry in techniques().items():
        reason = unavailable_reason(entry)
        if reason is not None:
            excluded[name] = f"unavailable here: {reason}"
        elif exclude and name in exclude:
            excluded[name] = exclude[name]
        elif selection is not None and name not in selection:
            excluded[name] = "not in this selection of the search space"
        else:
            usable.append(name)
    variants = {
        name: step_variants(name, variants_per_step, (base_configs or {}).get(name)) for name in usable
    }
    for name in usable:
        if not variants[name]:
            excluded[name] = f"its base config {(base_configs or {}).get(name)} is invalid"
    usable = [name for name in usable if variants[name]]
    done = {canonical_chain(chain) for chain in tried}
    chains: list[Chain] = []
    seen: set[tuple[str, ...]] = set()
    for specs in technique_chains(source_format, usable, max_steps):
        defaults = [variants[spec.name][0] for spec in specs]
        options = [defaults] + [
            defaults[:i] + [variant] + defaults[i + 1 :]
            for i, spec in enumerate(specs)
            for variant in variants[spec.name][1:]
        ]
        for chain in options:
            key = canonical_chain(chain)
            if key not in done and key not in seen:
                seen.add(key)
                chains.append([dict(step) for step in chain])
    space = CandidateSpace(source_format=source_format, chains=chains, excluded=excluded)
    reached = space.techniques()
    for name in usable:
        if name not in reached:
            takes = ", ".join(get_technique(name).spec.input_formats)
            excluded[name] = (
                f"no chain of at most {max_steps} steps from {source_format} reaches it untried (it takes {takes})"
            )
    return space
