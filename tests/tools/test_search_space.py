"""The one search space: declared ranges become variants, chains respect formats and stage order, tried chains
and excluded techniques are left out with their reasons."""

from __future__ import annotations

import pytest

from tools.techniques import list_techniques, parse_config
from tools.techniques.registry import get_technique
from tools.techniques.search_space import (
    candidate_chains,
    canonical_chain,
    search_ranges,
    stage_of,
    step_variants,
)

TORCH_FORMATS = ("torch_pickled_module", "lerobot_policy")


def test_ranges_produce_the_declared_values() -> None:
    variants = step_variants("ort_matmul_4bits")
    assert variants[0] == {"type": "ort_matmul_4bits"}
    default = parse_config(variants[0]).block_size  # type: ignore[attr-defined]
    sizes = {parse_config(v).block_size for v in variants}  # type: ignore[attr-defined]
    assert sizes == set(search_ranges("ort_matmul_4bits")["block_size"]) | {default}
    methods = {parse_config(v).calibration_method for v in step_variants("ort_int8_static")}  # type: ignore[attr-defined]
    assert methods == {"minmax", "entropy", "percentile"}
    # one field changed at a time around the defaults
    assert all(len(v) <= 2 for v in variants)


def test_a_small_limit_still_varies_every_field() -> None:
    variants = step_variants("ort_matmul_4bits", limit=4)
    assert len(variants) == 4
    assert {key for v in variants[1:] for key in v if key != "type"} == set(search_ranges("ort_matmul_4bits"))


def test_invalid_combinations_are_dropped() -> None:
    # rank_selection='energy' with a budget base would be fine; an out-of-range base yields nothing
    assert step_variants("structured_prune", base={"ratio": 5.0}) == []
    # every variant of every technique validates
    for info in list_techniques():
        for variant in step_variants(info.spec.name):
            parse_config(variant)
    space = candidate_chains("torch_pickled_module", base_configs={"structured_prune": {"ratio": 5.0}})
    assert "structured_prune" in space.excluded and "invalid" in space.excluded["structured_prune"]


@pytest.mark.parametrize("source", ["torch_pickled_module", "onnx", "lerobot_policy"])
def test_chains_are_format_compatible_and_in_stage_order(source: str) -> None:
    space = candidate_chains(source, variants_per_step=2)
    assert space.chains
    for chain in space.chains:
        assert 1 <= len(chain) <= 3
        fmt = source
        stages = []
        for i, step in enumerate(chain):
            spec = get_technique(step["type"]).spec
            assert fmt in spec.input_formats, (chain, fmt)
            stages.append(stage_of(spec))
            if stages[-1] == "distill":
                assert i > 0 and stages[i - 1] == "structural", chain
            fmt = spec.output_format
        assert stages.count("precision") <= 1 and stages.count("structural") <= 1, chain
        order = ["structural", "distill", "export", "precision"]
        assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages), chain


def test_no_onnx_step_feeds_a_torch_only_technique() -> None:
    for chain in candidate_chains("torch_pickled_module").chains:
        for before, after in zip(chain, chain[1:]):
            if get_technique(before["type"]).spec.output_format == "onnx":
                assert "onnx" in get_technique(after["type"]).spec.input_formats, chain


def test_every_available_technique_is_reachable() -> None:
    from_torch = set().union(*(candidate_chains(f).techniques() for f in TORCH_FORMATS))
    from_onnx = candidate_chains("onnx").techniques()
    for info in list_techniques():
        if not info.available:
            continue
        assert info.spec.name in from_torch, info.spec.name
        if "onnx" in info.spec.input_formats:
            assert info.spec.name in from_onnx, info.spec.name


def test_every_technique_left_out_has_a_reason() -> None:
    space = candidate_chains("onnx", exclude={"onnx_fp16": "measured slower than FP32 here"})
    assert space.excluded["onnx_fp16"] == "measured slower than FP32 here"
    assert "onnx_fp16" not in space.techniques()
    names = {info.spec.name for info in list_techniques()}
    assert space.techniques() | set(space.excluded) == names
    assert "it takes" in space.excluded["structured_prune"]


def test_tried_chains_are_excluded_with_same_steps_semantics() -> None:
    tried = [
        [{"type": "ort_int8_static", "calibration_method": "entropy"}],
        [{"type": "structured_prune"}, {"type": "distill", "time_budget_s": 33.0}],
    ]
    space = candidate_chains("torch_pickled_module", tried=tried, variants_per_step=3)
    keys = {canonical_chain(chain) for chain in space.chains}
    assert canonical_chain(tried[0]) not in keys
    assert canonical_chain([{"type": "structured_prune"}, {"type": "distill"}]) not in keys
    assert canonical_chain([{"type": "ort_int8_static", "calibration_method": "minmax"}]) in keys


class _RecordingBench:
    """Stands in for the evals' bench: records the chains the oracle asks for."""

    def __init__(self, source_format: str) -> None:
        self.original = type("Original", (), {"format": source_format})()
        self.asked: list[tuple[list[dict], list[dict] | None]] = []

    def candidate(self, name: str, kind: str, steps: list[dict], prefix: list[dict] | None = None) -> object:
        from evals.bench import Measured

        self.asked.append((steps, prefix))
        return Measured(name=name, kind=kind, steps=steps)


@pytest.mark.parametrize("grid", ["quick", "small", "standard"])
def test_the_oracle_measures_exactly_the_space_chains_of_its_grid(grid: str) -> None:
    from evals.oracle import BASE_CONFIGS, GRIDS, run_oracle

    selection = GRIDS[grid]  # type: ignore[index]
    bench = _RecordingBench("torch_pickled_module")
    run_oracle(bench, grid, [])  # type: ignore[arg-type]
    expected = candidate_chains(
        "torch_pickled_module",
        max_steps=selection.max_steps,
        variants_per_step=selection.variants_per_step,
        only=selection.techniques,
        base_configs=BASE_CONFIGS,
    ).chains
    assert [steps for steps, _ in bench.asked] == expected
    assert all(prefix == (steps[:-1] or None) for steps, prefix in bench.asked)
    assert 0 < len(expected) <= selection.max_chains
    if grid == "quick":
        assert selection.max_chains <= 8  # the performance suite measures every quick chain
