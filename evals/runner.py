"""Run the suite: per setup, the baselines, robopt's job on each scenario (its versions re-measured on the same
bench) and the oracle's grid; then the figures, written as JSON, a markdown summary and Pareto PNGs."""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from evals.baselines import run_baselines
from evals.bench import Bench, Measured
from evals.figures import scenario_figures
from evals.oracle import run_oracle
from evals.robopt_run import MEMORY_METHOD, RoboptRun, run_robopt
from evals.scenarios import Scenario, setups_of
from evals.summary import write_outputs
from tools.log import get_logger

_log = get_logger("evals")
Say = Callable[[str], None]
DEFAULT_NOISE_NOTE = (
    "Latencies are single runs on a small machine that may be shared with other work: treat ratios within "
    "about 20% as ties."
)


def machine_description() -> dict[str, Any]:
    """What the suite ran on: CPU model, cores, memory, platform and torch."""
    import psutil
    import torch

    from tools.evaluation.machine import cpu_model

    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _print(message: str) -> None:
    """Print a progress line."""
    print(f"[evals] {message}", flush=True)


def _robopt_versions(bench: Bench, run: RoboptRun, final: Measured | None) -> list[Measured]:
    """Every version robopt measured, re-measured on the bench (the final one reused)."""
    measured = []
    for name, ref in run.attempt_refs:
        if final is not None and final.ref == ref:
            measured.append(final)
        else:
            measured.append(bench.measure_ref(name, "robopt", ref))
    return measured


def _brief(measured: Measured) -> dict[str, Any]:
    """A candidate's JSON without its full measurement."""
    data = measured.to_json()
    data.pop("measurement")
    return data


def run_setup(
    service: Any,
    bench: Bench,
    scenarios: list[Scenario],
    reference_dir: Path,
    say: Say,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Baselines, robopt on each scenario, then the oracle grid, all on one bench; return (setup, scenarios)."""
    setup = bench.setup
    say(f"{setup.key}: measuring the baselines")
    baselines = run_baselines(bench)
    original = baselines["fp32_eager"]
    if original.status != "ok":
        raise RuntimeError(f"the original {setup.model} could not be measured: {original.reason}")
    runs = []
    for scenario in scenarios:
        say(f"{scenario.name}: running robopt ({scenario.goal!r})")
        run = run_robopt(service, scenario, bench, reference_dir)
        final = bench.measure_ref("robopt final", "robopt", run.final_ref) if run.final_ref else None
        versions = _robopt_versions(bench, run, final)
        say(f"{scenario.name}: robopt {run.status} in {run.wall_s:.0f} s, {len(run.attempts)} attempt(s)")
        runs.append((scenario, run, final, versions))
    say(f"{setup.key}: oracle grid '{setup.grid}'")
    oracle = run_oracle(bench, setup.grid, list(baselines.values()))
    say(
        f"{setup.key}: oracle measured {len(oracle.measured)} of {len(oracle.candidates)} in {oracle.wall_s:.0f} s"
    )
    figures = []
    for scenario, run, final, versions in runs:
        result = scenario_figures(scenario, baselines, oracle, run, final)
        result["setup"] = setup.key
        result["robopt_versions"] = [_brief(v) for v in versions]
        result["robopt_final_measurement"] = final.to_json() if final else None
        figures.append(result)
    described = {
        "model": setup.model,
        "simulator": setup.simulator,
        "episodes": setup.episodes if setup.simulator else None,
        "accuracy_plan": bench.plan.model_dump(mode="json"),
        "data": bench.data.model_dump(mode="json"),
        "baselines": {name: _brief(m) for name, m in baselines.items()},
        "oracle": oracle.to_json(),
    }
    return described, figures


def run_suite(
    scenarios: list[Scenario],
    data_dir: Path,
    reference_dir: Path,
    out_dir: Path,
    *,
    mode: str,
    note: str | None = None,
    say: Say = _print,
) -> dict[str, Any]:
    """Run every scenario and write the outputs into `out_dir`; return the JSON document.

    Temporary files of the jobs, baselines and oracle (ONNX Runtime's quantization scratch, latency children)
    go to `<data_dir>/work/tmp`, as the CLI's do.
    """
    from tools.isolation import scratch_dir

    with scratch_dir(Path(data_dir)):
        return _run_suite(scenarios, data_dir, reference_dir, out_dir, mode=mode, note=note, say=say)


def _run_suite(
    scenarios: list[Scenario],
    data_dir: Path,
    reference_dir: Path,
    out_dir: Path,
    *,
    mode: str,
    note: str | None,
    say: Say,
) -> dict[str, Any]:
    """`run_suite`'s body, inside the data directory's scratch folder."""
    from agents.llm import build_reasoner
    from server.jobs import JobService
    from server.settings import load_settings

    started = time.perf_counter()
    data_dir, reference_dir = Path(data_dir).resolve(), Path(reference_dir).resolve()
    settings = load_settings(data_dir=data_dir, reference_cache_dir=reference_dir)
    threads, iterations = settings.latency_threads, min(settings.latency_iterations, 30)
    service = JobService(settings, build_reasoner("rules"))
    setups: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    for setup in setups_of(scenarios):
        say(f"{setup.key}: building the bench (reference model, accuracy plan, machine profile)")
        bench = Bench.open(data_dir, setup, reference_dir, threads, iterations)
        mine = [s for s in scenarios if s.setup == setup]
        setups[setup.key], figures = run_setup(service, bench, mine, reference_dir, say)
        results += figures
    order = {s.name: i for i, s in enumerate(scenarios)}
    results.sort(key=lambda r: order[r["scenario"]])
    document = {
        "suite": "robopt evals",
        "mode": mode,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "measurement": {"threads": threads, "iterations": iterations, "batch": 1, "reasoner": "rules"},
        "memory_method": MEMORY_METHOD,
        "noise_note": note or DEFAULT_NOISE_NOTE,
        "wall_s": 0.0,
        "setups": setups,
        "scenarios": results,
    }
    document["wall_s"] = round(time.perf_counter() - started, 1)
    written = write_outputs(document, out_dir)
    say(f"wrote {', '.join(str(p) for p in written.values())} in {document['wall_s']:.0f} s")
    return document


def broken(document: dict[str, Any]) -> list[str]:
    """Why the run is broken (a robopt job that errored, a scenario with no robopt row), or nothing."""
    problems = []
    for scenario in document["scenarios"]:
        robopt = scenario["robopt"]
        if robopt["status"] == "failed":
            problems.append(f"{scenario['scenario']}: robopt failed: {robopt.get('error')}")
        if not scenario["rows"] or scenario["rows"][0]["name"] != "robopt":
            problems.append(f"{scenario['scenario']}: no robopt row")
    return problems
