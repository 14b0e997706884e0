"""Run one robopt job on a scenario, as the CLI's `robopt optimize` does, and record what it needed: attempts,
wall time and the optimizer's peak memory (sampled resident memory of this process and its descendants)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from evals.bench import Bench
from evals.scenarios import Scenario
from tools.errors import RoboptError
from tools.log import get_logger
from tools.versions import ArtifactRef

_log = get_logger("evals")
_MB = 1024 * 1024
MEMORY_METHOD = (
    "RSS of the eval process (which runs the robopt job in-process: graph, reasoner, history DB) plus every "
    "descendant (fork server, attempt and measurement children), summed and sampled every 100 ms by psutil"
)


class TreeMemorySampler:
    """Sample the summed RSS of this process and its descendants in a thread; keep the peak."""

    def __init__(self, interval_s: float = 0.1) -> None:
        """Prepare the sampler; sampling starts on entering the context."""
        self.interval_s = interval_s
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self.peak_single_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="evals-memory", daemon=True)

    def _sample(self) -> tuple[float, float]:
        """Return (summed RSS, largest single RSS) of the process tree, MB."""
        root = psutil.Process(os.getpid())
        sizes = []
        for process in [root, *root.children(recursive=True)]:
            try:
                sizes.append(process.memory_info().rss)
            except psutil.Error:
                continue
        return sum(sizes) / _MB, max(sizes, default=0) / _MB

    def _loop(self) -> None:
        """Sample until stopped, keeping the peaks."""
        while not self._stop.is_set():
            total, single = self._sample()
            self.peak_mb, self.peak_single_mb = max(self.peak_mb, total), max(self.peak_single_mb, single)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemorySampler":
        """Take the starting sample and start the sampling thread."""
        self.start_mb, self.peak_single_mb = self._sample()
        self.peak_mb = self.start_mb
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def to_json(self) -> dict[str, Any]:
        """Peak, starting point and the largest single process, in MB, with how they were measured."""
        return {
            "peak_tree_rss_mb": round(self.peak_mb, 1),
            "start_tree_rss_mb": round(self.start_mb, 1),
            "peak_increase_mb": round(self.peak_mb - self.start_mb, 1),
            "peak_single_process_rss_mb": round(self.peak_single_mb, 1),
            "samples": self.samples,
            "method": MEMORY_METHOD,
        }


@dataclass
class RoboptRun:
    """A robopt job's outcome as the eval records it (robopt's own claims kept apart from the eval's checks)."""

    scenario: str
    job_id: str | None = None
    status: str = "failed"  # goal_met | best_effort | needs_input | failed
    claimed_met: bool = False
    question: str | None = None
    error: str | None = None
    criteria: dict[str, Any] | None = None
    final_ref: ArtifactRef | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_refs: list[tuple[str, ArtifactRef]] = field(default_factory=list)
    final_attempt: int | None = None
    wall_s: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of the run (artifact references as job/version strings)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("final_ref", "attempt_refs")}
        data["final_version"] = (
            f"{self.final_ref.job_id}/{self.final_ref.version_id}" if self.final_ref else None
        )
        data["wall_s"] = round(self.wall_s, 1)
        return data


def run_robopt(service: Any, scenario: Scenario, bench: Bench, reference_dir: Path) -> RoboptRun:
    """Create and run the scenario's job with the rule reasoner; never raises for a job that fails."""
    from evals.sources import model_source
    from server.jobs import ModelSource
    from tools.evaluation.report import Report

    run = RoboptRun(scenario=scenario.name)
    setup = scenario.setup
    found = model_source(setup.model, reference_dir)
    source = ModelSource(path=found.path, options=found.options, label=setup.model, reference=found.reference)
    started = time.perf_counter()
    with TreeMemorySampler() as memory:
        try:
            record = service.create_job(
                source,
                scenario.goal,
                simulator=setup.simulator,
                data_path=found.data_path,
                max_attempts=scenario.max_attempts,
                time_budget_s=scenario.time_budget_s,
                episodes=setup.episodes,
            )
            run.job_id = record.id
            _check_same_measurement(run, record.options["job"], bench)
            result = asyncio.run(service.run(record.id))
        except RoboptError as error:
            run.error = error.one_line()
            result = None
    run.wall_s = time.perf_counter() - started
    run.memory = memory.to_json()
    if result is None:
        return run
    run.status = result.status
    values = result.values or {}
    goal = values.get("goal")
    if goal is not None:
        run.criteria = goal.criteria.model_dump(mode="json", exclude_defaults=True)
        run.question = goal.question
    if result.error:
        run.error = f"[{result.error.get('code')}] {result.error.get('message')}"
    for attempt in values.get("attempts", []):
        run.attempts.append(
            {
                "index": attempt.index,
                "technique": attempt.technique,
                "steps": attempt.steps,
                "status": attempt.status,
                "reason": attempt.reason,
                "duration_s": round(attempt.duration_s, 2),
            }
        )
        if attempt.version is not None and attempt.measurement is not None:
            run.attempt_refs.append((f"robopt #{attempt.index} {attempt.technique}", attempt.version))
    report_ref = values.get("report")
    if report_ref is not None:
        report = Report.model_validate_json(Path(report_ref.json_path).read_text())
        run.claimed_met = report.goal_met
        run.final_ref = report_ref.final_ref
        run.final_attempt = next(
            (a.index for a in values.get("attempts", []) if a.version == report_ref.final_ref), None
        )
        comparison = report.comparison
        run.reported = {
            "speedup": comparison.speedup,
            "compression": comparison.compression,
            "accuracy_change": comparison.accuracy.change if comparison.accuracy else None,
            "p50_ms": comparison.latency_ms_after,
            "missing": [m.name for m in report.missing],
        }
    _log.info("robopt job done", extra={"component": "evals", "job_id": run.job_id})
    return run


def _check_same_measurement(run: RoboptRun, job_options: dict[str, Any], bench: Bench) -> None:
    """Note when the job measures accuracy differently from the bench (the ratios would not be fair)."""
    if job_options.get("accuracy") != bench.plan.model_dump(mode="json"):
        run.notes.append(f"robopt's accuracy plan {job_options.get('accuracy')} differs from the bench's")
    if job_options.get("data") != bench.data.model_dump(mode="json"):
        run.notes.append(f"robopt's data {job_options.get('data')} differs from the bench's")
    for key, mine in (("latency_threads", bench.threads), ("latency_iterations", bench.iterations)):
        if job_options.get(key) != mine:
            run.notes.append(f"robopt's {key} is {job_options.get(key)}, the bench's {mine}")
