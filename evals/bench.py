"""The eval's measuring bench: one setup's original stored once, every candidate applied and measured the way a
robopt job measures its attempts (`graph.work.apply_chain` and `graph.work.measure` in an isolated child, the
same threads, timed runs, accuracy plan and held-out data), so robopt, the baselines and the oracle compare
fairly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evals.scenarios import Setup
from graph.state import DataSource
from tools.errors import MissingDependencyError, NotApplicableError, RoboptError
from tools.evaluation.evaluate import AccuracyPlan
from tools.evaluation.machine import MachineProfile, machine_profile, roofline_floor_ms
from tools.evaluation.measurement import Measurement
from tools.evaluation.targets import THIS_MACHINE
from tools.isolation import Limits, run_isolated
from tools.log import get_logger
from tools.versions import ArtifactRef, VersionStore

_log = get_logger("evals")
Status = Literal["ok", "failed", "n/a", "unavailable", "skipped"]
CHILD_TIME_S = 900.0


@dataclass
class Measured:
    """One candidate: the chain that made it, whether it ran, and its measurement (None when it did not)."""

    name: str
    kind: str  # "original" | "baseline" | "oracle" | "robopt"
    steps: list[dict[str, Any]]
    status: Status = "ok"
    reason: str = ""
    ref: ArtifactRef | None = None
    measurement: Measurement | None = None
    apply_s: float = 0.0
    measure_s: float = 0.0
    floor_ms: float | None = None
    floor_bound: str | None = None

    @property
    def work_s(self) -> float:
        """Seconds this candidate's own apply and measure took (a reused prefix is not counted again)."""
        return self.apply_s + self.measure_s

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the chain, status, figures and timings (the full measurement included)."""
        m = self.measurement
        accuracy = m.accuracy if m is not None else None
        return {
            "name": self.name,
            "kind": self.kind,
            "steps": self.steps,
            "status": self.status,
            "reason": self.reason,
            "version": f"{self.ref.job_id}/{self.ref.version_id}" if self.ref else None,
            "format": self.ref.format if self.ref else None,
            "p50_ms": m.runtime.p50_ms if m and m.runtime else None,
            "size_bytes": m.size.artifact_bytes if m and m.size else None,
            "accuracy": accuracy.value if accuracy else None,
            "accuracy_metric": accuracy.label if accuracy else None,
            "floor_ms": self.floor_ms,
            "floor_bound": self.floor_bound,
            "apply_s": round(self.apply_s, 2),
            "measure_s": round(self.measure_s, 2),
            "measurement": m.model_dump(mode="json") if m else None,
        }


def steps_key(steps: list[dict[str, Any]]) -> str:
    """A stable key for a chain of technique configs (defaults filled in, so equal configs share a key)."""
    from tools.techniques import parse_config

    return json.dumps([parse_config(step).model_dump(mode="json") for step in steps], sort_keys=True)


def chain_name(steps: list[dict[str, Any]]) -> str:
    """The chain's techniques joined with '+' ('fp32' for the original)."""
    return "+".join(str(step["type"]) for step in steps) or "original"


@dataclass
class Bench:
    """One setup's original and every candidate measured on it, cached by chain."""

    data_dir: Path
    setup: Setup
    original: ArtifactRef
    plan: AccuracyPlan
    data: DataSource
    threads: int
    iterations: int
    machine: MachineProfile
    cache: dict[str, Measured] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        """The version-store job that holds this bench's candidates."""
        return self.original.job_id

    @classmethod
    def open(
        cls, data_dir: Path, setup: Setup, reference_dir: Path, threads: int, iterations: int
    ) -> "Bench":
        """Store the setup's model (`evals.sources`) as the original of its eval job; read its accuracy plan and
        data the way `JobService.create_job` does, so the robopt job and this bench measure the same thing."""
        from evals.sources import data_source, model_source
        from graph.work import load_data
        from server.jobs import accuracy_plan
        from tools.evaluation.policy import is_policy
        from tools.techniques import load_version, store_original

        store = VersionStore(data_dir / "versions")
        source = model_source(setup.model, reference_dir)
        job_id = f"eval-{setup.key}"
        if store.list(job_id):
            store.delete_job(
                job_id, confirm=True
            )  # a fresh bench per run: nothing measured earlier is reused
        manifest = store_original(store, job_id, source.path, source.options, data_dir)
        data = data_source(source)
        loaded = load_version(store, job_id, manifest.id, data_dir)
        dataset = load_data(data, loaded) if data.kind != "synthetic" else None
        plan = accuracy_plan(
            setup.simulator,
            dataset is not None and dataset.labels is not None,
            setup.episodes,
            policy=is_policy(loaded, source.reference),
        )
        return cls(
            data_dir=data_dir,
            setup=setup,
            original=store.ref(job_id, manifest.id),
            plan=plan,
            data=data,
            threads=threads,
            iterations=iterations,
            machine=machine_profile(data_dir),
        )

    def _limits(self) -> Limits:
        """Limits of one child: the bench's threads and a generous wall-clock cap."""
        return Limits(time_s=CHILD_TIME_S, threads=self.threads)

    def measure(self, ref: ArtifactRef) -> Measurement:
        """Measure one version in a child, exactly as a robopt job's evaluate step does."""
        return run_isolated(
            "graph.work:measure",
            {
                "data_dir": str(self.data_dir),
                "ref": ref,
                "original": self.original,
                "plan": self.plan,
                "data": self.data,
                "targets": [THIS_MACHINE],
                "threads": self.threads,
                "iterations": self.iterations,
            },
            limits=self._limits(),
            job_id=self.job_id,
            scratch_dir=self.data_dir / "work",
        )

    def floor(self, candidate: Measured) -> None:
        """Set the candidate's roofline floor: its own weight bytes and precision, its FLOPs (or the original's),
        and the peaks of the runtime that measured it (ONNX Runtime's int8 kernels are not torch's)."""
        m = candidate.measurement
        base = self.cache.get(steps_key([]))
        if m is None or m.size is None:
            return
        flops = m.flops
        if flops is None and base is not None and base.measurement is not None:
            flops = base.measurement.flops
        floor = roofline_floor_ms(
            m.size.weight_bytes,
            flops,
            self.machine,
            precision=m.size.dominant_precision(),
            threads=self.threads,
            runtime=m.runtime.runtime if m.runtime is not None else None,
        )
        candidate.floor_ms, candidate.floor_bound = floor.floor_ms, floor.bound

    def measure_original(self) -> Measured:
        """The original, unoptimized (FP32, PyTorch eager for the torch references)."""
        return self.candidate("fp32_eager", "original", [])

    def candidate(
        self, name: str, kind: str, steps: list[dict[str, Any]], prefix: list[dict[str, Any]] | None = None
    ) -> Measured:
        """Apply `steps` to the original (continuing from the cached `prefix` chain when given) and measure it.

        A chain measured before is returned from the cache under its first name; a failure is recorded with
        its status (n/a: nothing to work on; unavailable: a missing package; failed: any other error)."""
        key = steps_key(steps)
        if key in self.cache:
            return self.cache[key]
        result = Measured(name=name, kind=kind, steps=steps)
        self.cache[key] = result
        source, todo = self.original, steps
        if prefix:
            before = self.cache.get(steps_key(prefix))
            if before is None or before.status != "ok" or before.ref is None:
                result.status = "skipped"
                result.reason = f"first step {chain_name(prefix)} did not run"
                return result
            source, todo = before.ref, steps[len(prefix) :]
        started = time.perf_counter()
        try:
            if todo:
                applied = run_isolated(
                    "graph.work:apply_chain",
                    {
                        "data_dir": str(self.data_dir),
                        "job_id": self.job_id,
                        "source": source,
                        "steps": todo,
                        "data": self.data,
                    },
                    limits=self._limits(),
                    job_id=self.job_id,
                    scratch_dir=self.data_dir / "work",
                )
                source = applied["ref"]
            result.ref = source
            result.apply_s = time.perf_counter() - started
            started = time.perf_counter()
            result.measurement = self.measure(source)
            result.measure_s = time.perf_counter() - started
        except MissingDependencyError as error:
            result.status, result.reason = "unavailable", error.one_line()
        except NotApplicableError as error:
            result.status, result.reason = "n/a", error.one_line()
        except RoboptError as error:
            result.status, result.reason = "failed", error.one_line()
        if result.status != "ok":
            result.apply_s = result.apply_s or time.perf_counter() - started
            _log.info(
                "eval candidate did not run",
                extra={
                    "component": "evals",
                    "job_id": self.job_id,
                    "technique": name,
                    "status": result.status,
                },
            )
        self.floor(result)
        return result

    def measure_ref(self, name: str, kind: str, ref: ArtifactRef) -> Measured:
        """Measure a version made elsewhere (robopt's) on this bench."""
        result = Measured(name=name, kind=kind, steps=[], ref=ref)
        started = time.perf_counter()
        try:
            result.measurement = self.measure(ref)
        except RoboptError as error:
            result.status, result.reason = "failed", f"measuring failed: {error.one_line()}"
        result.measure_s = time.perf_counter() - started
        self.floor(result)
        return result
