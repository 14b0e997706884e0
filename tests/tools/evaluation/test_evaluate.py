"""evaluate_version: one stored version measured end to end, then judged and reported with the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.technique_support import load, store_reference
from tools.errors import ValidationError
from tools.evaluation.criteria import Criteria, check_criteria
from tools.evaluation.evaluate import AccuracyPlan, evaluate_version, measure_accuracy
from tools.evaluation.fidelity import batches_digest
from tools.evaluation.machine import machine_profile
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import build_report, write_report
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, parse_config
from tools.versions import VersionStore

pytestmark = pytest.mark.usefixtures("single_thread")


def test_original_and_int8_measured_judged_and_reported(
    version_store: VersionStore, reference_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    original = store_reference(version_store, "vla", reference_cache, data_dir)
    int8 = apply(
        version_store, "vla", original.id, parse_config({"type": "ort_int8_dynamic"}), data_dir=data_dir
    ).version
    reference = load(version_store, original, data_dir)
    held_out = reaching_calibration(num_batches=2, batch_size=16, seed=4242)
    machine = machine_profile(data_dir)
    plan = AccuracyPlan(level="fidelity")
    cache = tmp_path / "fidelity"
    common = dict(
        data_dir=data_dir,
        reference=reference,
        data=held_out,
        machine=machine,
        iterations=20,
        reference_cache=cache,
    )
    before = evaluate_version(
        version_store, original, plan, targets=["orin nano"], reference_is_self=True, **common
    )
    after = evaluate_version(version_store, int8, plan, targets=["orin nano"], **common)
    # the original's outputs on this data were kept once, under the data's digest, for every later version
    assert [p.name for p in cache.iterdir()] == [f"{batches_digest(held_out.batches)}.pt"]

    assert before.accuracy.level == "fidelity" and before.accuracy.value == pytest.approx(1.0, abs=1e-9)
    # the headline is the worst of the 32 held-out samples, at or below the pooled cosine over all of them
    pooled = after.accuracy.details["outputs"][0]["cosine"]
    assert 0.995 < after.accuracy.value <= pooled < 1.0
    assert after.accuracy.value == after.accuracy.details["worst_sample_cosine"]
    assert after.size.artifact_bytes < 0.35 * before.size.artifact_bytes
    assert before.runtime.runtime == "torch-cpu" and after.runtime.runtime == "onnxruntime-cpu"
    assert before.flops and before.flops > 1e7
    (projection,) = after.projections
    assert projection.target == "jetson-orin-nano-8gb" and projection.estimated

    criteria = Criteria(max_size_mb=10, accuracy_floor=0.998, accuracy_level="fidelity")
    assert check_criteria(criteria, before, after).passed
    refused = check_criteria(criteria, before, before)
    assert [result.name for result in refused.missing] == ["max_size_mb"]
    if (
        pooled > 0.999 > after.accuracy.value
    ):  # a floor the pooled cosine passes and the worst sample does not
        strict = Criteria(max_size_mb=10, accuracy_floor=0.999, accuracy_level="fidelity")
        assert not check_criteria(strict, before, after).passed

    report = build_report("under 10 MB, fidelity 0.998", criteria, before, after, machine=machine)
    files = write_report(report, tmp_path / "report")
    assert report.goal_met and files.images
    assert "estimated" in files.markdown_path.read_text()


def test_task_metric_needs_labels_and_uses_them(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    original = store_reference(version_store, "vla", reference_cache, data_dir)
    model = load(version_store, original, data_dir)
    labelled = reaching_calibration(num_batches=2, batch_size=32, seed=4243)
    result = measure_accuracy(AccuracyPlan(level="task"), model, data=labelled)
    assert result.level == "task" and result.metric == "action_mse" and not result.higher_is_better
    assert result.value < 2e-4  # the trained policy; zero actions score about 1e-3
    unlabelled = reaching_calibration(num_batches=1, batch_size=8, seed=1, with_labels=False)
    with pytest.raises(ValidationError, match="labelled data"):
        measure_accuracy(AccuracyPlan(level="task"), model, data=unlabelled)
    with pytest.raises(ValidationError, match="simulator"):
        measure_accuracy(AccuracyPlan(level="closed_loop"), model)
    with pytest.raises(ValidationError, match="reference"):
        measure_accuracy(AccuracyPlan(level="fidelity"), model)


def test_a_spent_step_deadline_bounds_the_latency_child_and_skips_the_flops_count(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    """A measurement that starts with its step's time spent still measures latency (under the least timeout,
    never the default 300 s) and leaves the optional FLOPs count out; with time left, FLOPs are counted."""
    import time

    from tools.evaluation.evaluate import (
        LATENCY_MIN_TIMEOUT_S,
        LATENCY_RESERVE_S,
        latency_timeout_s,
    )
    from tools.latency import DEFAULT_TIMEOUT_S

    assert latency_timeout_s(None) == DEFAULT_TIMEOUT_S
    assert latency_timeout_s(time.monotonic() - 5) == LATENCY_MIN_TIMEOUT_S
    assert latency_timeout_s(time.monotonic() + 10 * DEFAULT_TIMEOUT_S) == DEFAULT_TIMEOUT_S
    middle = latency_timeout_s(time.monotonic() + 100 + LATENCY_RESERVE_S)
    assert 99 < middle <= 100

    original = store_reference(version_store, "vla", reference_cache, data_dir)
    reference = load(version_store, original, data_dir)
    plan = AccuracyPlan(level="fidelity")
    common = dict(data_dir=data_dir, reference=reference, iterations=5, reference_is_self=True)
    spent = evaluate_version(version_store, original, plan, deadline=time.monotonic() - 1, **common)
    assert spent.flops is None
    assert spent.runtime is not None and spent.runtime.p50_ms > 0 and spent.runtime.iterations >= 1
    timely = evaluate_version(version_store, original, plan, deadline=time.monotonic() + 600, **common)
    assert timely.flops and timely.flops > 1e7


def test_a_version_that_cannot_beat_the_best_passing_one_is_not_run_for_accuracy(
    version_store: VersionStore, reference_cache: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Size and latency come first: against a best version they show the candidate cannot beat on the goal's
    priority, the fidelity pass never runs (the original's outputs are never cached); against one it can beat,
    or one whose figure is unknown, accuracy is measured as before."""
    from tools.evaluation.priority import BestToBeat
    from tools.evaluation.targets import THIS_MACHINE

    original = store_reference(version_store, "vla", reference_cache, data_dir)
    reference = load(version_store, original, data_dir)
    held_out = reaching_calibration(num_batches=1, batch_size=8, seed=4242)
    plan = AccuracyPlan(level="fidelity")
    size = original.size_bytes or 0
    assert size > 0
    gate = dict(version_id="v0009", target=THIS_MACHINE, latency_noise=0.03, min_gain=0.02)
    heard: list[tuple[float, str]] = []

    def measured(cache: str, must_beat: BestToBeat) -> Measurement:
        return evaluate_version(
            version_store,
            original,
            plan,
            data_dir=data_dir,
            reference=reference,
            data=held_out,
            iterations=5,
            reference_cache=tmp_path / cache,
            must_beat=must_beat,
            progress=lambda percent, message: heard.append((percent, message)),
        )

    # no smaller than the best (size) / far slower than the best (latency): ruled out before accuracy
    for priority, p50, bytes_ in (("size", None, size), ("latency", 1e-6, None), ("pareto", 1e-6, size)):
        heard.clear()
        best = BestToBeat(priority=priority, p50_ms=p50, artifact_bytes=bytes_, **gate)
        skipped = measured(f"skipped-{priority}", best)
        assert skipped.accuracy is None and skipped.other_accuracy == []
        assert skipped.accuracy_skipped and "accuracy not measured" in skipped.accuracy_skipped
        assert f"not better on {priority} than the best passing version v0009" in skipped.accuracy_skipped
        assert skipped.runtime is not None and skipped.size is not None and skipped.flops
        assert not (tmp_path / f"skipped-{priority}").exists(), "the fidelity pass ran"
        assert [percent for percent, _ in heard] == [25, 50, 100]
    criteria = Criteria(max_size_mb=100, accuracy_floor=0.99, accuracy_level="fidelity")
    base = evaluate_version(
        version_store, original, plan, data_dir=data_dir, reference=reference, data=held_out, iterations=5
    )
    (accuracy,) = check_criteria(criteria, base, skipped).missing
    assert accuracy.name == "accuracy_floor" and accuracy.value is None and "not measured" in accuracy.note

    # ten times smaller than the best, or the best's figure unknown: accuracy is measured
    for name, best in (
        ("beatable", BestToBeat(priority="size", p50_ms=None, artifact_bytes=10 * size, **gate)),
        ("unknown", BestToBeat(priority="latency", p50_ms=None, artifact_bytes=size, **gate)),
    ):
        heard.clear()
        full = measured(name, best)
        assert full.accuracy_skipped is None and full.accuracy is not None
        assert full.accuracy.level == "fidelity" and full.accuracy.value == pytest.approx(1.0, abs=1e-6)
        assert [p.name for p in (tmp_path / name).iterdir()] == [f"{batches_digest(held_out.batches)}.pt"]
        assert [percent for percent, _ in heard] == [25, 50, 75, 100]
