"""Render a ModelProfile as the plain-text report of `robopt analyze` (aligned columns, no dependencies)."""

from __future__ import annotations

from typing import Sequence

from tools.profiling.schema import ModelProfile


def format_profile_table(profile: ModelProfile) -> str:
    """Render the profile as aligned plain-text sections: summary, I/O, components, layers, FLOPs, latency."""
    p = profile
    lines = [
        *_pairs(
            [
                ("Model", str(p.source) + (f"  ({p.path})" if p.path != p.source else "")),
                ("Format", f"{p.format.value} on {p.runtime.value}"),
                ("File size", _bytes(p.file_size_bytes) if p.file_size_bytes is not None else "n/a"),
                ("Parameters", f"{_count(p.parameters)} ({_bytes(p.parameter_bytes)})"
                 + (f", buffers {_bytes(p.buffer_bytes)}" if p.buffer_bytes else "")
                 + (f", {len(p.tied_parameters)} tied" if p.tied_parameters else "")),  # fmt: skip
                (
                    "FLOPs",
                    _flops(p.flops)
                    + " per forward"
                    + (" (floor: some ops uncounted)" if p.flops_uncounted else ""),
                ),
                ("Architecture", p.architecture.summary),
                ("Normalization", ", ".join(p.architecture.normalization) or "none"),
            ]
        ),
    ]
    if p.latency is not None:
        lat = p.latency
        lines += [
            "",
            f"Latency (batch 1, {lat.threads} thread{'s' if lat.threads > 1 else ''}, {lat.iterations} runs, "
            f"{lat.runtime.value}, in a child process)",
            *_table(
                ["p50 ms", "p95 ms", "p99 ms", "mean ms", "jitter ms", "Hz", "peak MB", "model MB"],
                [
                    [f"{v:.3f}" for v in (lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.mean_ms, lat.jitter_ms)]
                    + [f"{lat.hz:.1f}", f"{lat.peak_rss_mb:.0f}", f"{lat.model_rss_mb:.0f}"]
                ],
                right=range(8),
            ),
        ]
    if p.inputs or p.outputs:
        rows = [["in", t.name, "x".join(map(str, t.shape)), t.dtype] for t in p.inputs]
        rows += [["out", t.name, "x".join(map(str, t.shape)), t.dtype] for t in p.outputs]
        lines += ["", "Inputs and outputs", *_table(["", "name", "shape", "dtype"], rows)]
    if p.components:
        total_flops = p.flops or 0
        rows = [
            [c.name, c.role, c.module_type or "", _count(c.parameters), _share(c.parameters, p.parameters),
             _bytes(c.parameter_bytes), _flops(c.flops), _share(c.flops, total_flops)]  # fmt: skip
            for c in p.components
        ]
        lines += ["", "Components", *_table(
            ["component", "role", "type", "params", "%", "bytes", "FLOPs", "%"], rows, right=range(3, 8)
        )]  # fmt: skip
    if p.architecture.transformer_stacks:
        rows = [
            [s.path, s.role, str(s.blocks), _opt(s.hidden_size), _opt(s.attention_heads), _opt(s.kv_heads),
             _opt(s.mlp_width)]  # fmt: skip
            for s in p.architecture.transformer_stacks
        ]
        lines += ["", "Transformer stacks", *_table(
            ["path", "role", "blocks", "hidden", "heads", "kv heads", "MLP"], rows, right=range(2, 7)
        )]  # fmt: skip
    if p.architecture.conv_backbones:
        rows = [
            [c.component or "", c.role, str(c.conv_layers), str(c.stages), "->".join(map(str, c.channels))]
            for c in p.architecture.conv_backbones
        ]
        lines += [
            "",
            "Convolutions",
            *_table(["component", "role", "layers", "stages", "channels"], rows, right=[2, 3]),
        ]
    if p.layer_types:
        rows = [
            [
                t.layer_type,
                str(t.modules),
                _count(t.parameters),
                _share(t.parameters, p.parameters),
                _bytes(t.parameter_bytes),
            ]
            for t in p.layer_types
        ]
        lines += [
            "",
            "Parameters by layer type",
            *_table(["layer", "count", "params", "%", "bytes"], rows, right=range(1, 5)),
        ]
    if p.dtypes:
        rows = [
            [d.dtype, _count(d.parameters), _share(d.parameters, p.parameters), _bytes(d.parameter_bytes)]
            for d in p.dtypes
        ]
        lines += [
            "",
            "Parameters by precision",
            *_table(["dtype", "params", "%", "bytes"], rows, right=range(1, 4)),
        ]
    if p.flops_by_op:
        if any(o.nodes is not None for o in p.flops_by_op):
            rows = [
                [o.op, _opt(o.nodes), _flops(o.flops), _share(o.flops, p.flops or 0)] for o in p.flops_by_op
            ]
            lines += ["", "FLOPs by op", *_table(["op", "nodes", "FLOPs", "%"], rows, right=range(1, 4))]
        else:
            rows = [[o.op, _flops(o.flops), _share(o.flops, p.flops or 0)] for o in p.flops_by_op]
            lines += ["", "FLOPs by op", *_table(["op", "FLOPs", "%"], rows, right=range(1, 3))]
    notes = [f"uncounted: {op}" for op in p.flops_uncounted[:10]] + list(p.warnings)
    if notes:
        lines += ["", "Notes", *(f"  - {n}" for n in notes)]
    return "\n".join(lines)


def _pairs(items: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in items)
    return [f"{k.ljust(width)}  {v}" for k, v in items]


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] | range = ()
) -> list[str]:
    """Align columns; the columns listed in `right` are right-aligned (numbers)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = set(right)

    def fmt(cells: Sequence[str]) -> str:
        text = "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        return "  " + text.rstrip()

    return [fmt(headers), "  " + "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _flops(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("KFLOP", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} FLOP"


def _share(part: int | None, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if part is not None and whole else ""


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)
