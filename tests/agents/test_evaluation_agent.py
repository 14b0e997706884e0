"""Evaluation: the hard guards reject smaller-but-slower, accuracy-breaking and gainless candidates and tolerate
latency noise; the rule verdict names the gain and what is missing; check_verdict never lets an accept through a
failed guard; lower-is-better metrics are judged in their direction; the prompt renders."""

from __future__ import annotations

import json

import pytest

from agents.evaluation import EVALUATION, Verdict, VerdictInput, check_verdict, guards, judge_rules
from agents.intake import GoalSpec
from agents.prompts import render_prompt
from tests.agents.agent_figures import goal, measurement, verdict_input
from tools.errors import ValidationError
from tools.evaluation.measurement import Measurement

# The original: 100 ms p50 here, 400 MiB, output cosine 1.0 to itself.
BASELINE = measurement("v0", p50_ms=100.0, size_mib=400.0, accuracy=1.0)
GOAL = goal(max_latency_ms=50.0, max_size_mb=100.0, max_accuracy_drop=1.0, accuracy_drop_unit="relative_pct")


def _candidate(p50_ms: float, size_mib: float, accuracy: float = 0.999) -> Measurement:
    """An INT8 candidate with the given p50 here, size and output cosine."""
    return measurement(
        "v1", p50_ms=p50_ms, size_mib=size_mib, accuracy=accuracy, technique="ort_int8_dynamic"
    )


def _judge(
    candidate: Measurement, parent: Measurement = BASELINE, spec: GoalSpec = GOAL
) -> tuple[VerdictInput, Verdict]:
    """The guards and the rule verdict for `candidate` made from `parent`, as the evaluate node runs them."""
    payload = verdict_input(spec, BASELINE, parent, candidate)
    return payload, EVALUATION.run_rules(payload)


def _guard(payload: VerdictInput, name: str) -> bool:
    """Whether the named hard guard passed."""
    return next(g.passed for g in payload.guards if g.name == name)


def test_smaller_but_slower_is_rejected() -> None:
    payload, verdict = _judge(_candidate(p50_ms=120.0, size_mib=200.0))
    assert not _guard(payload, "not_slower")
    assert _guard(payload, "accuracy") and _guard(payload, "improves")
    assert not verdict.accept
    assert "not_slower" in verdict.reason and "100.000 -> 120.000 ms" in verdict.reason


def test_breaking_the_accuracy_drop_is_rejected_even_when_four_times_smaller_and_faster() -> None:
    payload, verdict = _judge(_candidate(p50_ms=25.0, size_mib=100.0, accuracy=0.95))
    assert not _guard(payload, "accuracy")
    assert _guard(payload, "not_slower") and _guard(payload, "improves")
    assert [r.name for r in payload.check.missing] == ["max_accuracy_drop"]
    assert not verdict.accept
    assert "accuracy" in verdict.reason and "max_accuracy_drop" in verdict.reason


def test_a_candidate_that_improves_nothing_is_rejected() -> None:
    payload, verdict = _judge(_candidate(p50_ms=99.0, size_mib=396.0))
    assert _guard(payload, "accuracy") and _guard(payload, "not_slower")
    assert not _guard(payload, "improves")
    assert not verdict.accept and "neither smaller nor faster" in verdict.reason


def test_slower_within_noise_but_twice_smaller_is_accepted_naming_gain_and_what_is_missing() -> None:
    payload, verdict = _judge(_candidate(p50_ms=102.9, size_mib=200.0))
    assert all(g.passed for g in payload.guards)
    assert verdict.accept
    assert "2.00x smaller" in verdict.reason
    assert "still missing max_size_mb, max_latency_ms" in verdict.reason


def test_slower_beyond_the_noise_is_rejected_however_much_smaller() -> None:
    payload, verdict = _judge(_candidate(p50_ms=103.5, size_mib=50.0))
    assert not _guard(payload, "not_slower") and not verdict.accept


SIZE_GOAL = goal(max_size_mb=100.0, max_accuracy_drop=1.0, accuracy_drop_unit="relative_pct")


def test_a_size_goal_accepts_a_slower_step_that_newly_meets_its_size_and_names_the_slowdown() -> None:
    payload, verdict = _judge(_candidate(p50_ms=127.0, size_mib=90.0), spec=SIZE_GOAL)
    assert _guard(payload, "not_slower") and payload.check.passed and verdict.accept
    detail = next(g.detail for g in payload.guards if g.name == "not_slower")
    assert "100.000 -> 127.000 ms (1.27x slower" in detail and "['max_size_mb']" in detail


def test_a_size_goal_still_refuses_a_slower_step_that_meets_nothing_new() -> None:
    payload, verdict = _judge(_candidate(p50_ms=127.0, size_mib=200.0), spec=SIZE_GOAL)
    assert not _guard(payload, "not_slower") and _guard(payload, "improves") and not verdict.accept


def test_a_slower_step_that_breaks_the_goals_speed_bound_is_refused_even_when_it_meets_the_size() -> None:
    spec = goal(max_size_mb=100.0, min_speedup=1.0)
    payload, verdict = _judge(_candidate(p50_ms=127.0, size_mib=90.0), spec=spec)
    assert not _guard(payload, "not_slower") and not verdict.accept


def test_at_most_2x_slower_accepts_a_slower_step_within_it_that_meets_the_size() -> None:
    spec = goal(max_size_mb=100.0, min_speedup=0.5)
    payload, verdict = _judge(_candidate(p50_ms=127.0, size_mib=90.0), spec=spec)
    assert _guard(payload, "not_slower") and verdict.accept
    assert "allowed: the goal's latency bounds hold" in next(
        g.detail for g in payload.guards if g.name == "not_slower"
    )


def test_a_candidate_meeting_every_criterion_says_so() -> None:
    payload, verdict = _judge(_candidate(p50_ms=40.0, size_mib=90.0))
    assert payload.check.passed and verdict.accept
    assert "2.50x faster" in verdict.reason and "4.44x smaller" in verdict.reason
    assert "every criterion met" in verdict.reason


def test_newly_meeting_a_limit_counts_as_a_gain_below_the_size_threshold() -> None:
    parent = measurement("v1", p50_ms=40.0, size_mib=101.0, accuracy=0.999)
    candidate = measurement("v2", p50_ms=40.0, size_mib=99.5, accuracy=0.999)
    payload, verdict = _judge(candidate, parent=parent)
    assert _guard(payload, "improves") and "newly meets ['max_size_mb']" in verdict.reason
    assert verdict.accept


def test_not_slower_is_judged_on_the_latency_target_not_here() -> None:
    spec = goal(max_latency_ms=50.0, latency_target="jetson-orin-nano-8gb")
    parent = measurement("v1", p50_ms=40.0, size_mib=100.0, projections=[("jetson-orin-nano-8gb", 80.0)])
    candidate = measurement("v2", p50_ms=30.0, size_mib=60.0, projections=[("jetson-orin-nano-8gb", 95.0)])
    payload, verdict = _judge(candidate, parent=parent, spec=spec)
    assert not _guard(payload, "not_slower") and "80.000 -> 95.000" in verdict.reason
    assert not verdict.accept


@pytest.mark.parametrize(
    "candidate",
    [
        _candidate(p50_ms=120.0, size_mib=200.0),
        _candidate(p50_ms=25.0, size_mib=100.0, accuracy=0.95),
        _candidate(p50_ms=99.0, size_mib=396.0),
    ],
    ids=["slower", "accuracy", "no-gain"],
)
def test_check_verdict_refuses_an_accept_when_a_guard_failed(candidate: Measurement) -> None:
    payload = verdict_input(GOAL, BASELINE, BASELINE, candidate)
    failed = [g.name for g in payload.guards if not g.passed]
    assert failed
    with pytest.raises(ValidationError, match=f"cannot accept.*{failed[0]}"):
        check_verdict(payload, Verdict(accept=True, reason="it is smaller"))
    check_verdict(payload, Verdict(accept=False, reason="a guard failed"))


def test_check_verdict_lets_the_judge_reject_within_passing_guards() -> None:
    payload = verdict_input(GOAL, BASELINE, BASELINE, _candidate(p50_ms=90.0, size_mib=200.0))
    assert all(g.passed for g in payload.guards)
    check_verdict(payload, Verdict(accept=True, reason="2x smaller"))
    check_verdict(payload, Verdict(accept=False, reason="uses the whole accuracy margin"))


MSE_GOAL = goal(
    max_latency_ms=50.0,
    max_accuracy_drop=5.0,
    accuracy_drop_unit="relative_pct",
    accuracy_floor=0.011,
    accuracy_level="task",
    accuracy_metric="action_mse",
)


def _mse(version_id: str, value: float, p50_ms: float = 100.0) -> Measurement:
    """A version measured by action MSE on labelled data (lower is better)."""
    return measurement(
        version_id,
        p50_ms=p50_ms,
        size_mib=400.0 if version_id == "v0" else 100.0,
        accuracy=value,
        level="task",
        metric="action_mse",
        higher_is_better=False,
    )


@pytest.mark.parametrize(
    "mse, kept, drop_pct",
    [(0.0104, True, 4.0), (0.0090, True, -10.0), (0.0108, False, 8.0), (0.0112, False, 12.0)],
)
def test_a_higher_mse_is_a_drop_and_the_floor_is_an_upper_limit(
    mse: float, kept: bool, drop_pct: float
) -> None:
    baseline = _mse("v0", 0.010)
    payload = verdict_input(MSE_GOAL, baseline, baseline, _mse("v1", mse, p50_ms=40.0))
    results = {r.name: r for r in payload.check.results}
    assert results["max_accuracy_drop"].value == pytest.approx(drop_pct)
    assert results["accuracy_floor"].passed == (mse <= 0.011)
    assert _guard(payload, "accuracy") == kept
    assert judge_rules(payload).accept == kept


def test_evaluation_prompt_renders_the_schema_and_the_input() -> None:
    payload = verdict_input(GOAL, BASELINE, BASELINE, _candidate(p50_ms=102.9, size_mib=200.0))
    schema = json.dumps(Verdict.model_json_schema(), indent=2)
    text = render_prompt("evaluation", input_json=payload.model_dump_json(), output_schema=schema)
    assert schema in text and payload.model_dump_json() in text
    assert "${" not in text


# --- once a version meets every criterion --------------------------------------------------------------------


def _judge_against_best(
    candidate: Measurement, best: Measurement, spec: GoalSpec = GOAL
) -> tuple[VerdictInput, Verdict]:
    """The verdict for `candidate` made from the original while `best` already meets every criterion."""
    payload = verdict_input(spec, BASELINE, BASELINE, candidate)
    payload = payload.model_copy(
        update={
            "best": best,
            "guards": guards(spec, BASELINE, candidate, payload.check, payload.parent_check, best=best),
        }
    )
    return payload, EVALUATION.run_rules(payload)


def test_a_passing_candidate_that_does_not_beat_the_best_passing_version_is_not_continued_from() -> None:
    best = measurement("v2", p50_ms=20.0, size_mib=90.0, technique="ort_int8_dynamic")
    # faster than its parent (the original) and within every criterion, but slower than v2 at the same size
    slower = _candidate(p50_ms=30.0, size_mib=90.0)
    payload, verdict = _judge_against_best(slower, best)
    assert payload.check.passed and _guard(payload, "not_slower") and _guard(payload, "improves")
    assert not _guard(payload, "beats_best") and not verdict.accept
    assert "not continued from" in verdict.reason and "v2" in verdict.reason
    with pytest.raises(ValidationError, match="beats_best"):
        check_verdict(payload, Verdict(accept=True, reason="an LLM would keep it"))
    # Pareto (speed and size both limited): smaller and no slower beats it, smaller but slower does not
    payload, verdict = _judge_against_best(_candidate(p50_ms=20.2, size_mib=60.0), best)
    assert _guard(payload, "beats_best") and verdict.accept
    payload, verdict = _judge_against_best(_candidate(p50_ms=28.0, size_mib=60.0), best)
    assert not _guard(payload, "beats_best") and not verdict.accept
    # a size goal counts size only
    size_goal = goal(max_size_mb=100.0, max_accuracy_drop=1.0, accuracy_drop_unit="relative_pct")
    payload, verdict = _judge_against_best(_candidate(p50_ms=28.0, size_mib=60.0), best, size_goal)
    assert _guard(payload, "beats_best") and verdict.accept


def test_no_best_guard_while_nothing_passes_or_when_the_goal_stops_at_the_first() -> None:
    best = measurement("v2", p50_ms=20.0, size_mib=90.0, technique="ort_int8_dynamic")
    payload, _ = _judge(_candidate(p50_ms=30.0, size_mib=90.0))
    assert "beats_best" not in [g.name for g in payload.guards]
    first = GOAL.model_copy(update={"stop_at_first": True})
    payload, verdict = _judge_against_best(_candidate(p50_ms=30.0, size_mib=90.0), best, first)
    assert "beats_best" not in [g.name for g in payload.guards] and verdict.accept
