"""Search spaces derived from a model's structure: depth, heads and MLP width of transformer stacks, hidden
widths of Linear stacks, and channels of conv stages.

Discovery only reads the module tree; `slicing.verify_space` then keeps the dimensions whose slicing is
proved exact on real inputs, so an unusual layer is left out of the space instead of being sliced wrongly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tools.errors import ValidationError

DimensionKind = Literal["depth", "heads", "mlp_hidden", "linear_hidden", "conv_channels"]
KEEP_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ELEMENTWISE = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Hardswish,
    nn.ReLU6,
    nn.Dropout,
    nn.Identity,
)


class WidthGroup(BaseModel):
    """Features that are sliced together: the outputs of `producers`, read by `consumers`.

    A unit (a head, a neuron, a channel) spans `unit_size` consecutive features. A producer with `chunks` > 1
    emits that many equal blocks of the width (a FiLM layer's scale and shift) and is sliced in every block.
    """

    model_config = ConfigDict(frozen=True)

    producers: tuple[str, ...]
    chunks: tuple[int, ...]
    norms: tuple[str, ...] = ()
    consumers: tuple[str, ...]
    units: int = Field(ge=1)
    unit_size: int = Field(default=1, ge=1)


class Dimension(BaseModel):
    """One searchable choice: a depth (blocks kept) or a width (heads, neurons or channels kept)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Unique name, the module path plus what it sets (e.g. 'blocks.heads').")
    kind: DimensionKind
    path: str = Field(description="Module path of the stack, Sequential or stage it changes.")
    choices: tuple[int, ...] = Field(description="Ascending values; the last one is the original.")
    original: int
    groups: tuple[WidthGroup, ...] = Field(
        default=(), description="Width groups scaled by the choice (each keeps choice/original of its units)."
    )

    def kept_units(self, group: WidthGroup, choice: int) -> int:
        """Units of `group` kept at `choice` (groups scale proportionally to the dimension's reference)."""
        return max(1, min(group.units, round(group.units * choice / self.original)))


class SearchSpace(BaseModel):
    """The dimensions of a model's architecture that candidates may shrink, with their choices."""

    model_config = ConfigDict(frozen=True)

    dimensions: tuple[Dimension, ...]

    def original(self) -> dict[str, int]:
        """The source model's architecture: every dimension at its original value."""
        return {dim.name: dim.original for dim in self.dimensions}

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        return math.prod(len(dim.choices) for dim in self.dimensions)

    def complete(self, architecture: dict[str, int]) -> dict[str, int]:
        """Fill unnamed dimensions with their original value; refuse unknown names or values off the grid."""
        known = {dim.name: dim for dim in self.dimensions}
        unknown = sorted(set(architecture) - set(known))
        if unknown:
            raise ValidationError(f"unknown search dimensions {unknown}; known: {sorted(known)}")
        bad = [f"{name}={value}" for name, value in architecture.items() if value not in known[name].choices]
        if bad:
            raise ValidationError(f"values off the search grid: {', '.join(bad)}")
        return {**self.original(), **architecture}

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready summary: name, kind, choices and original value of every dimension."""
        return [
            {"name": d.name, "kind": d.kind, "choices": list(d.choices), "original": d.original}
            for d in self.dimensions
        ]


def width_choices(units: int, fractions: tuple[float, ...] = KEEP_FRACTIONS) -> tuple[int, ...]:
    """Kept-unit counts for the keep fractions, at least one, ascending, ending at `units`."""
    return tuple(sorted({max(1, round(units * f)) for f in fractions} | {units}))


def depth_choices(blocks: int, fractions: tuple[float, ...] = KEEP_FRACTIONS) -> tuple[int, ...]:
    """Blocks kept: every count for short stacks, the keep fractions for deep ones."""
    if blocks <= 8:
        return tuple(range(1, blocks + 1))
    return width_choices(blocks, fractions)


def derive_search_space(
    module: nn.Module, protected: tuple[str, ...] = (), fractions: tuple[float, ...] = KEEP_FRACTIONS
) -> SearchSpace:
    """Find the sliceable dimensions of `module`, leaving out those under a `protected` module path."""
    claimed: set[str] = set()
    dimensions: list[Dimension] = []
    modules = dict(module.named_modules())
    for path, child in modules.items():
        if isinstance(child, nn.ModuleList) and not _claimed(path, claimed):
            found = _transformer_stack(path, child, fractions)
            if found:
                dimensions += found
                claimed.add(path)
    for path, child in modules.items():
        if _claimed(path, claimed) or not isinstance(child, (nn.Sequential, nn.ModuleList)):
            continue
        found = _linear_stack(path, child, fractions) + _conv_sequence(path, child, fractions)
        found += _conv_stages(path, child, modules, fractions)
        if found:
            dimensions += found
            claimed.add(path)
    kept = [dim for dim in dimensions if not _touches(dim, protected) and len(dim.choices) > 1]
    return SearchSpace(dimensions=tuple(kept))


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _claimed(path: str, claimed: set[str]) -> bool:
    return any(path == c or path.startswith(c + ".") for c in claimed)


def _touches(dim: Dimension, protected: tuple[str, ...]) -> bool:
    paths = [dim.path] + [p for g in dim.groups for p in g.producers + g.norms + g.consumers]
    return any(p == guard or p.startswith(guard + ".") for p in paths for guard in protected)


def _attention(block: nn.Module) -> tuple[str, nn.Module, str] | None:
    """(path, module, output projection name) of the first attention with q/k/v/o Linears and a head_dim."""
    for name, child in block.named_modules():
        output = "o_proj" if isinstance(getattr(child, "o_proj", None), nn.Linear) else "out_proj"
        projections = [getattr(child, n, None) for n in ("q_proj", "k_proj", "v_proj", output)]
        if all(isinstance(p, nn.Linear) for p in projections) and isinstance(
            getattr(child, "head_dim", None), int
        ):
            return name, child, output
    return None


def _mlp(block: nn.Module) -> tuple[str, tuple[str, ...], str] | None:
    """(path, producer names, consumer name) of a block's feed-forward network."""
    for name, child in block.named_modules():
        if isinstance(getattr(child, "fc1", None), nn.Linear) and isinstance(
            getattr(child, "fc2", None), nn.Linear
        ):
            return name, ("fc1",), "fc2"
        if isinstance(getattr(child, "up_proj", None), nn.Linear) and isinstance(
            getattr(child, "down_proj", None), nn.Linear
        ):
            gate = ("gate_proj",) if isinstance(getattr(child, "gate_proj", None), nn.Linear) else ()
            return name, gate + ("up_proj",), "down_proj"
    return None


def _transformer_stack(path: str, stack: nn.ModuleList, fractions: tuple[float, ...]) -> list[Dimension]:
    """Depth, heads and MLP width of a ModuleList of same-class blocks with attention."""
    blocks = list(stack)
    if not blocks or len({type(b) for b in blocks}) != 1 or _attention(blocks[0]) is None:
        return []
    heads_groups, mlp_groups = [], []
    for index, block in enumerate(blocks):
        attn_name, attn, output = _attention(block)  # type: ignore[misc]
        base = _join(path, str(index), attn_name)
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        if q.out_features == k.out_features == v.out_features and q.out_features % attn.head_dim == 0:
            heads_groups.append(
                WidthGroup(
                    producers=tuple(_join(base, n) for n in ("q_proj", "k_proj", "v_proj")),
                    chunks=(1, 1, 1),
                    consumers=(_join(base, output),),
                    units=q.out_features // attn.head_dim,
                    unit_size=attn.head_dim,
                )
            )
        mlp = _mlp(block)
        if mlp is not None:
            mlp_path = _join(path, str(index), mlp[0])
            producer = block.get_submodule(_join(mlp[0], mlp[1][0]))
            mlp_groups.append(
                WidthGroup(
                    producers=tuple(_join(mlp_path, n) for n in mlp[1]),
                    chunks=tuple(1 for _ in mlp[1]),
                    consumers=(_join(mlp_path, mlp[2]),),
                    units=producer.out_features,
                )
            )
    dimensions = []
    if len(blocks) >= 2:
        dimensions.append(
            Dimension(
                name=_join(path, "depth"),
                kind="depth",
                path=path,
                choices=depth_choices(len(blocks), fractions),
                original=len(blocks),
            )
        )
    widths: tuple[tuple[DimensionKind, list[WidthGroup]], ...] = (
        ("heads", heads_groups),
        ("mlp_hidden", mlp_groups),
    )
    for kind, groups in widths:
        # a width dimension only when every block has the group and all agree on its width
        if len(groups) == len(blocks) and len({g.units for g in groups}) == 1:
            units = groups[0].units
            dimensions.append(
                Dimension(
                    name=_join(path, kind),
                    kind=kind,
                    path=path,
                    choices=width_choices(units, fractions),
                    original=units,
                    groups=tuple(groups),
                )
            )
    return dimensions


def _linear_stack(path: str, sequence: nn.Module, fractions: tuple[float, ...]) -> list[Dimension]:
    """The hidden widths of a Sequential of Linear layers with elementwise activations between them."""
    if not isinstance(sequence, nn.Sequential):
        return []
    children = list(sequence.named_children())
    if not all(isinstance(c, (nn.Linear,) + ELEMENTWISE) for _, c in children):
        return []
    linears = [(name, c) for name, c in children if isinstance(c, nn.Linear)]
    if len(linears) < 2:
        return []
    groups = tuple(
        WidthGroup(
            producers=(_join(path, name),),
            chunks=(1,),
            consumers=(_join(path, nxt),),
            units=layer.out_features,
        )
        for (name, layer), (nxt, _) in zip(linears, linears[1:])
    )
    reference = groups[0].units
    return [
        Dimension(
            name=_join(path, "hidden"),
            kind="linear_hidden",
            path=path,
            choices=width_choices(reference, fractions),
            original=reference,
            groups=groups,
        )
    ]


def _conv_sequence(path: str, sequence: nn.Module, fractions: tuple[float, ...]) -> list[Dimension]:
    """Output channels of each Conv2d in a Sequential that feeds the next Conv2d through norms/activations."""
    if not isinstance(sequence, nn.Sequential):
        return []
    children = list(sequence.named_children())
    dimensions = []
    for index, (name, conv) in enumerate(children):
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        norms: list[str] = []
        for later_name, later in children[index + 1 :]:
            if isinstance(later, nn.BatchNorm2d) and later.num_features == conv.out_channels:
                norms.append(_join(path, later_name))
            elif (
                isinstance(later, nn.Conv2d) and later.groups == 1 and later.in_channels == conv.out_channels
            ):
                group = WidthGroup(
                    producers=(_join(path, name),),
                    chunks=(1,),
                    norms=tuple(norms),
                    consumers=(_join(path, later_name),),
                    units=conv.out_channels,
                )
                dimensions.append(_channels(_join(path, name), group, fractions))
                break
            elif not isinstance(later, ELEMENTWISE):
                break
    return dimensions


def _stage_parts(stage: nn.Module) -> tuple[str, nn.Conv2d, list[str], list[tuple[str, int]]] | None:
    """(conv name, conv, norm names, per-channel Linear names with chunk counts) of a one-conv stage."""
    convs = [(n, c) for n, c in stage.named_children() if isinstance(c, nn.Conv2d)]
    if len(convs) != 1 or convs[0][1].groups != 1:
        return None
    name, conv = convs[0]
    width = conv.out_channels
    norms = [
        n for n, c in stage.named_children() if isinstance(c, nn.BatchNorm2d) and c.num_features == width
    ]
    modulators = [
        (n, c.out_features // width)
        for n, c in stage.named_children()
        if isinstance(c, nn.Linear) and c.out_features % width == 0
    ]
    others = [
        c
        for n, c in stage.named_children()
        if n != name and n not in norms and n not in dict(modulators) and not isinstance(c, ELEMENTWISE)
    ]
    return None if others else (name, conv, norms, modulators)


def _conv_stages(
    path: str, container: nn.Module, modules: dict[str, nn.Module], fractions: tuple[float, ...]
) -> list[Dimension]:
    """Channels of stage modules (one Conv2d, its norm, FiLM-style Linears) that feed the next stage."""
    stages = list(container.named_children())
    if len(stages) < 2 or len({type(s) for _, s in stages}) != 1 or isinstance(stages[0][1], nn.Conv2d):
        return []
    parts = [_stage_parts(stage) for _, stage in stages]
    if any(p is None for p in parts):
        return []
    dimensions = []
    for index, ((name, _), part) in enumerate(zip(stages, parts)):
        conv_name, conv, norms, modulators = part  # type: ignore[misc]
        stage_path = _join(path, name)
        consumer = None
        if index + 1 < len(stages):
            next_conv_name, next_conv = parts[index + 1][0], parts[index + 1][1]  # type: ignore[index]
            if next_conv.in_channels == conv.out_channels:
                consumer = _join(path, stages[index + 1][0], next_conv_name)
        else:
            consumer = _projection_after(path, conv.out_channels, modules)
        if consumer is None:
            continue
        group = WidthGroup(
            producers=(_join(stage_path, conv_name),) + tuple(_join(stage_path, n) for n, _ in modulators),
            chunks=(1,) + tuple(m for _, m in modulators),
            norms=tuple(_join(stage_path, n) for n in norms),
            consumers=(consumer,),
            units=conv.out_channels,
        )
        dimensions.append(_channels(stage_path, group, fractions))
    return dimensions


def _projection_after(path: str, channels: int, modules: dict[str, nn.Module]) -> str | None:
    """The one Linear beside the stage container that reads exactly its channels (channels-last tokens)."""
    parent = path.rpartition(".")[0]
    siblings = [
        name
        for name, module in modules.items()
        if name.rpartition(".")[0] == parent
        and name != path
        and isinstance(module, nn.Linear)
        and module.in_features == channels
    ]
    return siblings[0] if len(siblings) == 1 else None


def _channels(path: str, group: WidthGroup, fractions: tuple[float, ...]) -> Dimension:
    return Dimension(
        name=_join(path, "channels"),
        kind="conv_channels",
        path=path,
        choices=width_choices(group.units, fractions),
        original=group.units,
        groups=(group,),
    )
