"""Analysis: the factors the goal asks of the baseline, the bottleneck from the roofline floor, the fragile layers
(outliers of the given sensitivity list only), recommendations limited to what is available, and the prompt.
"""

from __future__ import annotations

import json

import pytest

from agents.analysis import (
    ANALYSIS,
    Analysis,
    analyze_rules,
    check_analysis,
    needed_factors,
    sensitive_layers,
)
from agents.prompts import render_prompt
from tests.agents.agent_figures import LAYERS, OUTLIERS, analysis_input, goal, measurement, sensitivity
from tools.errors import ValidationError

BASELINE = measurement("v0", p50_ms=120.0, size_mib=400.0, projections=[("jetson-orin-nano-8gb", 300.0)])


def test_speedup_needed_from_a_latency_limit_on_this_machine() -> None:
    speedup, compression = needed_factors(goal(max_latency_ms=40.0), BASELINE)
    assert speedup == pytest.approx(120.0 / 40.0)
    assert compression is None


def test_latency_limit_on_another_target_reads_its_projection_not_the_local_p50() -> None:
    speedup, _ = needed_factors(goal(max_latency_ms=50.0, latency_target="jetson-orin-nano-8gb"), BASELINE)
    assert speedup == pytest.approx(300.0 / 50.0)


def test_min_speedup_alone_is_the_speedup_needed_and_the_larger_need_wins() -> None:
    assert needed_factors(goal(min_speedup=2.5), BASELINE) == (2.5, None)
    speedup, _ = needed_factors(goal(min_speedup=2.0, max_latency_ms=30.0), BASELINE)
    assert speedup == pytest.approx(4.0)
    speedup, _ = needed_factors(goal(min_speedup=6.0, max_latency_ms=30.0), BASELINE)
    assert speedup == pytest.approx(6.0)


def test_compression_needed_from_a_size_limit_in_mib() -> None:
    speedup, compression = needed_factors(goal(max_size_mb=100.0), BASELINE)
    assert speedup is None
    assert compression == pytest.approx(4.0)
    _, compression = needed_factors(goal(max_size_mb=100.0, min_compression=5.0), BASELINE)
    assert compression == pytest.approx(5.0)


def test_a_goal_without_size_or_speed_limits_needs_no_factor() -> None:
    assert needed_factors(goal("fastest", max_accuracy_drop=1.0), BASELINE) == (None, None)


@pytest.mark.parametrize(
    "p50_ms, floor_ms, floor_bound, expected",
    [
        (50.0, 10.0, "compute", "overhead"),
        (40.0, 10.0, "compute", "compute"),
        (30.0, 10.0, "memory", "memory"),
        (30.0, None, "memory", "unknown"),
        (30.0, 10.0, None, "unknown"),
    ],
)
def test_bottleneck_is_overhead_only_above_four_times_the_roofline_floor(
    p50_ms: float, floor_ms: float | None, floor_bound: str | None, expected: str
) -> None:
    baseline = measurement("v0", p50_ms=p50_ms, size_mib=40.0)
    payload = analysis_input(goal(max_latency_ms=10.0), baseline, floor_ms=floor_ms, floor_bound=floor_bound)
    analysis = analyze_rules(payload)
    assert analysis.bottleneck == expected
    overhead_risk = any("overhead" in risk for risk in analysis.risks)
    assert overhead_risk == (expected == "overhead")


def test_sensitive_layers_are_the_outliers_only_most_sensitive_first() -> None:
    assert sensitive_layers(sensitivity(LAYERS)) == OUTLIERS


def test_uniform_or_tiny_errors_name_no_sensitive_layer() -> None:
    assert sensitive_layers(sensitivity({f"block{i}": 0.02 for i in range(8)})) == []
    tiny = {f"block{i}": 1e-5 for i in range(7)} | {"head": 5e-4}
    assert sensitive_layers(sensitivity(tiny)) == []
    assert sensitive_layers([]) == []


def test_sensitive_layers_are_capped_at_the_limit() -> None:
    scores = {f"noise{i}": 0.001 for i in range(10)} | {f"outlier{i}": 0.1 * (i + 1) for i in range(6)}
    assert sensitive_layers(sensitivity(scores)) == ["outlier5", "outlier4", "outlier3", "outlier2"]
    assert sensitive_layers(sensitivity(scores), limit=2) == ["outlier5", "outlier4"]


def test_rules_recommend_only_available_techniques() -> None:
    available = ["ort_int8_dynamic", "onnx_export", "torch_fp16_cast"]
    payload = analysis_input(goal(max_latency_ms=10.0, max_size_mb=50.0), BASELINE, available=available)
    analysis = ANALYSIS.run_rules(payload)
    assert analysis.speedup_needed == pytest.approx(12.0) and analysis.compression_needed == pytest.approx(
        8.0
    )
    assert analysis.recommended == ["ort_int8_dynamic", "onnx_export"]
    assert analysis.sensitive_layers == OUTLIERS


def test_heavy_needs_recommend_structural_and_four_bit_first_when_available() -> None:
    analysis = ANALYSIS.run_rules(analysis_input(goal(max_latency_ms=10.0, max_size_mb=50.0), BASELINE))
    assert analysis.recommended[:3] == ["structured_prune", "distill", "ort_matmul_4bits"]
    assert "12.0x faster and 8.0x smaller" in analysis.summary
    onnx = ANALYSIS.run_rules(analysis_input(goal(max_latency_ms=10.0), BASELINE, fmt="onnx"))
    assert "structured_prune" not in onnx.recommended and onnx.recommended[0] == "ort_int8_dynamic"


def _answer(**changes: object) -> Analysis:
    """A well-formed analysis of BASELINE with some fields changed."""
    return Analysis(summary="tiny-vla, 400 MB, p50 120 ms", bottleneck="unknown").model_copy(update=changes)


def test_check_analysis_refuses_an_unknown_or_unavailable_technique() -> None:
    payload = analysis_input(goal(max_latency_ms=40.0), BASELINE, available=["ort_int8_dynamic"])
    check_analysis(payload, _answer(recommended=["ort_int8_dynamic"]))
    with pytest.raises(ValidationError, match="not available.*structured_prune"):
        check_analysis(payload, _answer(recommended=["ort_int8_dynamic", "structured_prune"]))
    with pytest.raises(ValidationError, match="turbo_quant"):
        check_analysis(payload, _answer(recommended=["turbo_quant"]))


def test_check_analysis_refuses_layer_names_the_sensitivity_list_does_not_have() -> None:
    payload = analysis_input(goal(max_latency_ms=40.0), BASELINE)
    check_analysis(payload, _answer(sensitive_layers=OUTLIERS))
    with pytest.raises(ValidationError, match="action_head.fc9"):
        check_analysis(payload, _answer(sensitive_layers=["action_head.out", "action_head.fc9"]))
    with pytest.raises(ValidationError, match="'head'"):
        check_analysis(payload, _answer(sensitive_layers=["head"]))


def test_analysis_prompt_renders_the_schema_and_the_input() -> None:
    payload = analysis_input(goal(max_latency_ms=40.0), BASELINE)
    schema = json.dumps(Analysis.model_json_schema(), indent=2)
    text = render_prompt("analysis", input_json=payload.model_dump_json(), output_schema=schema)
    assert schema in text and payload.model_dump_json() in text
    assert "${" not in text
