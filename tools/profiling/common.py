"""Pieces both profilers share: weight records and their tables, artifact size, tensor descriptions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from tools.profiling.components import ComponentIndex
from tools.profiling.schema import ComponentProfile, ConvBackbone, DtypeProfile, LayerTypeProfile, TensorInfo


@dataclass(frozen=True)
class WeightRecord:
    """One counted weight tensor: where it lives, what owns it, its size and dtype."""

    name: str
    numel: int
    nbytes: int
    dtype: str
    layer_type: str
    owner: str
    shape: tuple[int, ...] = ()


def component_table(
    records: Iterable[WeightRecord], index: ComponentIndex, flops: Mapping[str, int] | None
) -> list[ComponentProfile]:
    """Sum weights per component, in the order components first appear, and attach their FLOPs."""
    totals: dict[str, list[int]] = {}
    for record in records:
        entry = totals.setdefault(index.component_of(record.name), [0, 0])
        entry[0] += record.numel
        entry[1] += record.nbytes
    for name in flops or {}:
        if flops and flops[name] and name not in totals:
            totals[name] = [0, 0]
    ordered = [p for p in index.specs if p in totals] + [p for p in totals if p not in index.specs]
    return [
        ComponentProfile(
            name=path,
            role=index.role_of(path),
            module_type=index.type_of(path),
            parameters=totals[path][0],
            parameter_bytes=totals[path][1],
            flops=flops.get(path, 0) if flops is not None else None,
        )
        for path in ordered
    ]


def layer_type_table(records: Iterable[WeightRecord]) -> list[LayerTypeProfile]:
    """Sum weights per owning layer type, largest first."""
    groups: dict[str, tuple[set[str], int, int]] = {}
    for record in records:
        owners, count, size = groups.get(record.layer_type, (set(), 0, 0))
        owners.add(record.owner)
        groups[record.layer_type] = (owners, count + record.numel, size + record.nbytes)
    rows = [
        LayerTypeProfile(layer_type=k, modules=len(o), parameters=c, parameter_bytes=b)
        for k, (o, c, b) in groups.items()
    ]
    return sorted(rows, key=lambda r: (-r.parameters, r.layer_type))


def dtype_table(records: Iterable[WeightRecord]) -> list[DtypeProfile]:
    """Sum weights per dtype, largest first."""
    groups: dict[str, list[int]] = {}
    for record in records:
        entry = groups.setdefault(record.dtype, [0, 0])
        entry[0] += record.numel
        entry[1] += record.nbytes
    rows = [DtypeProfile(dtype=k, parameters=c, parameter_bytes=b) for k, (c, b) in groups.items()]
    return sorted(rows, key=lambda r: (-r.parameters, r.dtype))


def artifact_size(path: Path, extra_files: Iterable[Path] = ()) -> int | None:
    """Bytes on disk of a file (plus `extra_files`, such as ONNX external data) or of a directory's files."""
    path = Path(path)
    if path.is_file():
        seen = {path.resolve()}
        total = path.stat().st_size
        for extra in extra_files:
            extra = extra.resolve()
            if extra not in seen and extra.is_file():
                seen.add(extra)
                total += extra.stat().st_size
        return total
    if path.is_dir():
        total = 0
        for folder, _, files in os.walk(path):
            for name in files:
                file = Path(folder, name)
                if file.is_file() and not file.is_symlink():
                    total += file.stat().st_size
        return total
    return None


def dtype_name(dtype: Any) -> str:
    """Render a torch or numpy dtype as 'float32', 'int64', ..."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return str(np.dtype(dtype))


def describe_outputs(value: Any, names: list[str] | None = None) -> list[TensorInfo]:
    """Describe the tensors a forward pass returned: a tensor, a tuple (`output_0`, ...), a ModelOutput."""
    found: list[tuple[str, Any]] = []
    _flatten(value, "output", found, top=True)
    if names and len(names) == len(found):
        found = [(name, tensor) for name, (_, tensor) in zip(names, found)]
    return [TensorInfo(name=n, shape=[int(d) for d in t.shape], dtype=dtype_name(t.dtype)) for n, t in found]


def _flatten(value: Any, prefix: str, found: list[tuple[str, Any]], top: bool = False) -> None:
    """Collect (name, tensor) pairs from nested outputs; other values are skipped."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        found.append((prefix, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, str(key) if top else f"{prefix}.{key}", found)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}_{i}", found)
    # anything else (caches, None, scalars) is not an output tensor


def conv_backbones(
    per_component: Mapping[str, list[tuple[int, int, bool]]], index: ComponentIndex
) -> list[ConvBackbone]:
    """Summarize (out_channels, stride, transposed) convolutions per component into ConvBackbone records."""
    backbones = []
    for component, convs in per_component.items():
        down = sum(1 for _, step, transposed in convs if step > 1 and not transposed)
        backbones.append(
            ConvBackbone(
                component=component,
                role=index.role_of(component),
                conv_layers=len(convs),
                channels=list(dict.fromkeys(out for out, _, _ in convs if out)),
                downsampling_layers=down,
                stages=down + 1,
            )
        )
    return backbones
