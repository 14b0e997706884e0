"""Tests of the report: it renders (JSON, Markdown, PNGs), says 'estimated' where it projects, round-trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.tools.evaluation.figures import FIXED_MACHINE, MB, runtime_figures, size_figures
from tools.evaluation.criteria import Criteria
from tools.evaluation.machine import machine_profile
from tools.evaluation.measurement import Measurement
from tools.evaluation.report import (
    AcceptanceCheck,
    AttemptRecord,
    Report,
    build_report,
    report_json_schema,
    write_report,
)
from tools.evaluation.runners import measure_runtime
from tools.evaluation.size import size_of_module
from tools.evaluation.types import AccuracyResult
from tools.inputs import InputSpec
from tools.intake.types import LoadOptions

REPO = Path(__file__).resolve().parents[3]
_PNG = b"\x89PNG\r\n\x1a\n"

MACHINE = FIXED_MACHINE


def _m(
    version: str,
    technique: str,
    fidelity: float,
    p50_ms: float,
    size_mb: float,
    dtype: str = "float32",
    itemsize: int = 4,
) -> Measurement:
    """A hand-built measurement with a fidelity figure (cosine to the original)."""
    nbytes = int(size_mb * MB)
    return Measurement(
        version_id=version,
        technique=technique,
        accuracy=AccuracyResult(
            level="fidelity", metric="cosine", value=fidelity, higher_is_better=True, samples=32
        ),
        runtime=runtime_figures(p50_ms, peak_rss_mb=250 + size_mb, threads=2, iterations=50, tail=0.1),
        size=size_figures(nbytes, dtype, itemsize),
        flops=2 * nbytes // itemsize,
    )


BASE = _m("v0", "intake", 1.0, 40.0, 400)
HALF = _m("v1", "fp16_cast", 0.9999, 30.0, 200, "float16", 2)
INT8 = _m("v2", "ort_int8_dynamic", 0.998, 15.0, 100, "int8", 1)
PRUNED = _m("v3", "structured_prune", 0.90, 35.0, 300)
ATTEMPTS = [
    AttemptRecord(
        index=1, technique="fp16_cast", status="accepted", reason="smaller, fidelity kept", measurement=HALF
    ),
    AttemptRecord(
        index=2,
        technique="structured_prune",
        status="rejected",
        reason="fidelity dropped",
        measurement=PRUNED,
    ),
    AttemptRecord(index=3, technique="gptq", status="failed", reason="no calibration data"),
    AttemptRecord(
        index=4, technique="ort_int8_dynamic", status="accepted", reason="2x faster", measurement=INT8
    ),
]


def _report(criteria: Criteria) -> Report:
    return build_report(
        "under 150 MB and 20 ms on a Jetson Orin NX, fidelity cosine at least 0.99",
        criteria,
        BASE,
        INT8,
        ATTEMPTS,
        ["orin nano", "rpi5", "this machine"],
        machine=MACHINE,
    )


def test_report_renders_every_file_and_round_trips(tmp_path: Path) -> None:
    criteria = Criteria(
        max_size_mb=150, max_latency_ms=20, latency_target="jetson-orin-nx-16gb", accuracy_floor=0.99
    )
    report = _report(criteria)
    files = write_report(report, tmp_path / "report")
    assert Report.model_validate_json(files.json_path.read_text()) == report
    assert {p.name for p in files.images} == {"pareto.png", "attempts.png"}
    for image in files.images:
        assert image.read_bytes()[:8] == _PNG and image.stat().st_size > 5000
    markdown = files.markdown_path.read_text()
    assert "| figure | baseline (v0) | final (v2) | change |" in markdown
    assert "fidelity to the original cosine" in markdown and "accuracy figure" not in markdown
    assert "4x smaller" in markdown and "2.67x faster" in markdown
    assert "![pareto](pareto.png)" in markdown


def test_projections_are_estimated_everywhere_but_this_machine() -> None:
    report = _report(Criteria(max_latency_ms=20, latency_target="orin nx"))
    by_target = {t.target: t for t in report.targets}
    assert set(by_target) == {"jetson-orin-nano-8gb", "raspberry-pi-5", "this-machine", "jetson-orin-nx-16gb"}
    assert not by_target["this-machine"].projected.estimated
    assert by_target["this-machine"].projected.latency_ms == INT8.runtime.p50_ms
    for name in ("jetson-orin-nano-8gb", "raspberry-pi-5", "jetson-orin-nx-16gb"):
        assert by_target[name].projected.estimated
    latency = next(r for r in report.criteria_check.results if r.name == "max_latency_ms")
    assert latency.estimated
    markdown = render(report)
    for row in markdown.splitlines():
        if row.startswith("| NVIDIA") or row.startswith("| Raspberry"):
            assert "(estimated)" in row, row
    assert "(estimated)" in next(r for r in markdown.splitlines() if r.startswith("| max_latency_ms"))


def render(report: Report) -> str:
    from tools.evaluation.report import render_markdown

    return render_markdown(report)


def test_a_missed_goal_lists_what_is_missing_with_margins() -> None:
    report = _report(Criteria(max_size_mb=50, accuracy_floor=0.999))
    assert not report.goal_met
    missing = {r.name: r for r in report.missing}
    assert set(missing) == {"max_size_mb", "accuracy_floor"}
    assert missing["max_size_mb"].margin == pytest.approx(-50)
    markdown = render(report)
    assert (
        "**Goal not met.**" in markdown
        and "max_size_mb: 100 against a limit of 50 MB, short by 50 MB" in markdown
    )


def test_the_acceptance_figures_are_judged_and_the_search_figures_shown_beside_them() -> None:
    """INT8 met the 0.99 floor on the search part (0.998) and misses it on the acceptance part (0.985)."""
    accepted = INT8.model_copy(update={"accuracy": INT8.accuracy.model_copy(update={"value": 0.985})})
    check = AcceptanceCheck(
        independent=True,
        batches=2,
        samples=64,
        search_batches=1,
        baseline_search=BASE.accuracy,
        final_search=INT8.accuracy,
    )
    report = build_report(
        "fidelity at least 0.99",
        Criteria(accuracy_floor=0.99),
        BASE,
        accepted,
        machine=MACHINE,
        acceptance=check,
    )
    assert not report.goal_met and [m.name for m in report.missing] == ["accuracy_floor"]
    assert Report.model_validate_json(report.model_dump_json()) == report
    markdown = render(report)
    assert "## Acceptance" in markdown and "64 held-out inputs (2 batches)" in markdown
    assert "| final | fidelity to the original cosine | 0.998 | 0.985 |" in markdown


def test_pareto_and_attempts_are_in_the_report() -> None:
    report = _report(Criteria())
    # v1 (fp16) keeps more fidelity than v2, so it stays on the front; the pruned v3 is beaten by v2
    assert report.goal_met and report.pareto.front == ["v0", "v2", "v1"]
    assert report.pareto.dominated_by == {"v3": "v2"}
    assert [a.status for a in report.attempts] == ["accepted", "rejected", "failed", "accepted"]
    assert "| 3 | - | gptq | failed |" in render(report)
    orin_nano = next(t for t in report.targets if t.target == "jetson-orin-nano-8gb")
    assert orin_nano.feasibility.fits and orin_nano.feasibility.precision == "int8"


def test_documented_json_schema_matches_the_model() -> None:
    documented = json.loads((REPO / "docs" / "report.schema.json").read_text())
    assert (
        documented == report_json_schema()
    ), "regenerate docs/report.schema.json (see docs/report-schema.md)"


@pytest.mark.integration
def test_report_from_real_measurements(tmp_path: Path, data_dir: Path) -> None:
    """Measure a real model and its fp16-weight copy here, then project both and write the report."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 64)).eval()
    path = tmp_path / "mlp.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 512)), str(path))
    options = LoadOptions(input_specs=(InputSpec(name="x", shape=(1, 512)),))
    runtime = measure_runtime(path, options, "torch-cpu", threads=1, iterations=30)
    size = size_of_module(model, path.stat().st_size)
    base = Measurement(
        version_id="v0", technique="intake", runtime=runtime, size=size, flops=2 * size.total_params
    )
    machine = machine_profile(data_dir)
    report = build_report(
        "as fast as possible",
        Criteria(max_latency_ms=1000, latency_target="rpi5"),
        base,
        base,
        targets=["orin nx"],
        machine=machine,
    )
    files = write_report(report, tmp_path / "out")
    assert report.goal_met and report.criteria_check.results[0].estimated
    projected = {t.target: t.projected for t in report.targets}
    assert projected["jetson-orin-nx-16gb"].latency_ms < projected["raspberry-pi-5"].latency_ms
    assert "measured" in files.markdown_path.read_text() and files.images
