"""The `architecture_search` technique: multi-objective search over weight-sliced sub-architectures.

Optuna's NSGA-II (seeded) proposes architectures from the space derived from the model; each candidate is
sliced from the trained weights, briefly distilled from the source, and measured: latency in this process
(one thread, batch 1, median of runs), parameters, and fidelity (cosine with the source's outputs on
held-out calibration data). The Pareto set goes into the facts; the picked candidate is the artifact.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from tools.architecture_search.slicing import block_importance, slice_architecture, verify_space
from tools.architecture_search.space import KEEP_FRACTIONS, SearchSpace, derive_search_space
from tools.distillation import distill_module
from tools.distillation.core import Milestones
from tools.errors import OptimizationError, ValidationError, first_line
from tools.intake import ModelFormat
from tools.log import get_logger
from tools.techniques.artifacts import TORCH_INPUTS, save_module_product
from tools.techniques.base import (
    CalibrationData,
    Family,
    Needs,
    ProgressCallback,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.module_io import call_module
from tools.techniques.registry import register

Objective = Literal["latency", "fidelity", "params"]
Pick = Literal["fastest_within_fidelity", "best_fidelity", "knee"]
DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = dict(
    latency="minimize", fidelity="maximize", params="minimize"
)
LATENCY_METHOD = (
    "in-process, 1 thread, batch 1, median of {runs}+ runs timed in alternating rounds of 5 with the source; "
    "the latency objective is candidate median / source median"
)
_log = get_logger("architecture_search")


class ArchitectureSearchConfig(TechniqueConfig):
    """Search smaller sub-architectures sliced from the trained model; store the picked Pareto candidate."""

    type: Literal["architecture_search"] = "architecture_search"
    n_trials: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Candidates proposed at most.",
        json_schema_extra={"search": [8, 16, 32]},
    )
    time_budget_s: float = Field(
        default=600.0, gt=0, le=86_400, description="Stop proposing candidates after this many seconds."
    )
    distill_steps: int = Field(
        default=30,
        ge=0,
        le=10_000,
        description="Distillation steps given to every candidate before it is measured.",
        json_schema_extra={"search": [0, 30, 100]},
    )
    final_distill_steps: int = Field(
        default=100, ge=0, le=100_000, description="Further distillation steps for the picked candidate."
    )
    distill_lr: float = Field(default=2e-4, gt=0, le=1.0, description="Peak learning rate of distillation.")
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Distillation samples per step (default: calibration's)."
    )
    objectives: tuple[Objective, ...] = Field(
        default=("latency", "fidelity"),
        min_length=2,
        max_length=3,
        description="What the search trades off: latency and params are minimized, fidelity maximized.",
    )
    pick: Pick = Field(
        default="fastest_within_fidelity",
        description="Which Pareto candidate to store: the fastest whose fidelity reaches min_fidelity, the most "
        "faithful, or the knee (closest to the ideal point of the normalized front); all must reach "
        "min_fidelity.",
    )
    min_fidelity: float = Field(
        default=0.9,
        gt=0,
        le=1.0,
        description="Cosine similarity to the source's outputs the pick must reach.",
    )
    protected: tuple[str, ...] = Field(
        default=(), description="Module paths the search must leave unchanged (e.g. 'action_head')."
    )
    keep_fractions: tuple[float, ...] = Field(
        default=KEEP_FRACTIONS, min_length=2, description="Width keep-fractions offered per dimension."
    )
    latency_runs: int = Field(default=20, ge=3, le=1000, description="Timed runs per latency measurement.")
    population_size: int | None = Field(
        default=None, ge=2, le=500, description="NSGA-II population; default: a third of n_trials, 4 to 50."
    )

    @field_validator("keep_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in value if not 0 < f <= 1]
        if bad:
            raise ValueError(f"keep_fractions must lie in (0, 1], got {bad}")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _consistent(self) -> "ArchitectureSearchConfig":
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat: {self.objectives}")
        if "fidelity" not in self.objectives:
            raise ValueError("objectives must include 'fidelity', or the search would only shrink the model")
        return self


@dataclass
class Candidate:
    """One evaluated architecture."""

    trial: int
    architecture: dict[str, int]
    params: int
    latency_ms: float
    relative_latency: float
    fidelity: float
    output_mse: float
    task_loss: float | None
    distill_steps: int
    module: nn.Module | None = field(default=None, repr=False)

    def objective_values(self, objectives: tuple[str, ...]) -> list[float]:
        """The values optuna minimizes or maximizes, in objective order."""
        table = {"latency": self.relative_latency, "fidelity": self.fidelity, "params": float(self.params)}
        return [table[name] for name in objectives]

    def as_fact(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "trial": self.trial,
            "architecture": dict(self.architecture),
            "params": self.params,
            "latency_ms": self.latency_ms,
            "relative_latency": self.relative_latency,
            "fidelity": self.fidelity,
            "output_mse": self.output_mse,
            "task_loss": self.task_loss,
            "distill_steps": self.distill_steps,
        }


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """Whether objective vector `a` is at least as good as `b` everywhere and better somewhere."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    better_or_equal = all(s * x <= s * y for s, x, y in zip(signs, a, b))
    return better_or_equal and any(s * x < s * y for s, x, y in zip(signs, a, b))


def pareto_front(candidates: list[Candidate], objectives: tuple[str, ...]) -> list[Candidate]:
    """The candidates no other candidate dominates, in trial order."""
    directions = [DIRECTIONS[o] for o in objectives]
    values = [c.objective_values(objectives) for c in candidates]
    return [
        c
        for i, c in enumerate(candidates)
        if not any(dominates(values[j], values[i], directions) for j in range(len(candidates)) if j != i)
    ]


def pick_candidate(
    front: list[Candidate], rule: Pick, min_fidelity: float, objectives: tuple[str, ...]
) -> Candidate:
    """Choose from the Pareto front by `rule` among candidates reaching `min_fidelity`."""
    eligible = [c for c in front if c.fidelity >= min_fidelity]
    if not eligible:
        best = max((c.fidelity for c in front), default=float("nan"))
        raise OptimizationError(
            f"no candidate reached fidelity {min_fidelity}; the best reached {best:.4f}",
            hint="lower min_fidelity, give candidates more distill_steps, or protect sensitive modules",
            detail={"pareto": [c.as_fact() for c in front]},
        )
    if rule == "fastest_within_fidelity":
        return min(eligible, key=lambda c: (c.relative_latency, -c.fidelity))
    if rule == "best_fidelity":
        return max(eligible, key=lambda c: (c.fidelity, -c.relative_latency))
    values = [c.objective_values(objectives) for c in eligible]
    signs = [1.0 if DIRECTIONS[o] == "minimize" else -1.0 for o in objectives]
    distances = []
    for row in values:
        total = 0.0
        for k, sign in enumerate(signs):
            column = [sign * v[k] for v in values]
            low, high = min(column), max(column)
            total += ((sign * row[k] - low) / (high - low)) ** 2 if high > low else 0.0
        distances.append(total)
    return eligible[distances.index(min(distances))]


def _timings(module: nn.Module, inputs: Mapping[str, torch.Tensor], runs: int, warmup: int) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                call_module(module, inputs)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                call_module(module, inputs)
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(threads)
    return times


def compare_latency(
    source: nn.Module, candidate: nn.Module, inputs: Mapping[str, torch.Tensor], runs: int
) -> tuple[float, float]:
    """Median ms of source and candidate, timed in alternating rounds so that load changes hit both alike."""
    first: list[float] = []
    second: list[float] = []
    for _ in range(max(3, -(-runs // 5))):
        first += _timings(source, inputs, 5, 1)
        second += _timings(candidate, inputs, 5, 1)
    return statistics.median(first), statistics.median(second)


@dataclass
class SearchResult:
    """Everything the search established; `picked.module` is the model to store."""

    space: SearchSpace
    left_out: dict[str, str]
    candidates: list[Candidate]
    front: list[Candidate]
    picked: Candidate
    source_params: int
    source_latency_ms: float
    picked_latency_ms: float
    trials_run: int
    stopped_by: Literal["trials", "time"]
    seconds: float
    final_distillation: dict[str, Any] | None
    failures: dict[int, str]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _Search:
    """State of one search run: the verified space, the candidates so far, failures and the clock."""

    def __init__(
        self, module: nn.Module, data: CalibrationData, config: ArchitectureSearchConfig, budget: float
    ) -> None:
        self.module = module.eval()
        self.data = data
        self.config = config
        self.budget = budget
        self.start = time.perf_counter()
        train, held = data.split()
        self.probe = {k: v[:4] for k, v in train.batches[0].items()}
        self.sample = {k: v[:1] for k, v in held.batches[0].items()}
        self.candidates: list[Candidate] = []
        self.seen: dict[tuple[tuple[str, int], ...], Candidate] = {}
        self.failures: dict[int, str] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def prepare(self) -> None:
        """Derive and verify the space, score blocks and time the source."""
        config = self.config
        modules = dict(self.module.named_modules())
        missing = [name for name in config.protected if name not in modules]
        if missing:
            raise ValidationError(f"protected modules not found in the model: {', '.join(missing)}")
        space = derive_search_space(self.module, config.protected, config.keep_fractions)
        self.scores = block_importance(self.module, space, self.probe)
        self.space, self.left_out = verify_space(self.module, space, self.probe, self.scores)
        if not self.space.dimensions:
            raise OptimizationError(
                "found nothing to search: no transformer stack, Linear stack or conv stage that can be sliced "
                "exactly" + (f" (left out: {self.left_out})" if self.left_out else ""),
                hint="architecture_search slices eager PyTorch models built from standard layers",
            )
        self.source_params = _count(self.module)

    def evaluate(self, number: int, architecture: dict[str, int]) -> Candidate:
        """Slice, distill briefly and measure one architecture."""
        candidate = slice_architecture(self.module, self.space, architecture, self.scores)
        remaining = max(0.0, self.budget - self.elapsed())
        report = distill_module(
            self.module,
            candidate,
            self.data,
            steps=self.config.distill_steps,
            lr=self.config.distill_lr,
            batch_size=self.config.batch_size,
            time_budget_s=remaining,
            seed=self.config.seed + number,
        )
        source_ms, latency = compare_latency(self.module, candidate, self.sample, self.config.latency_runs)
        return Candidate(
            trial=number,
            architecture=dict(architecture),
            params=_count(candidate),
            latency_ms=latency,
            relative_latency=latency / source_ms,
            fidelity=report.after.fidelity_cosine,
            output_mse=report.after.output_mse,
            task_loss=report.after.task_loss,
            distill_steps=report.steps_run,
            module=candidate,
        )

    def source_values(self) -> list[float]:
        """The source model's own objective values (fidelity 1): what an unchanged architecture scores."""
        table = {"latency": 1.0, "fidelity": 1.0, "params": float(self.source_params)}
        return [table[name] for name in self.config.objectives]

    def keep_front_modules(self) -> None:
        """Drop the modules of dominated candidates, so memory holds only the front."""
        front = {id(c) for c in pareto_front(self.candidates, self.config.objectives)}
        for candidate in self.candidates:
            if id(candidate) not in front:
                candidate.module = None


def search_architectures(
    module: nn.Module,
    data: CalibrationData,
    config: ArchitectureSearchConfig,
    *,
    time_budget_s: float | None = None,
    progress: ProgressCallback | None = None,
) -> SearchResult:
    """Run the multi-objective search on `module` with `data` and return the front and the pick."""
    import optuna

    budget = min(b for b in (config.time_budget_s, time_budget_s) if b is not None)
    milestones = Milestones(progress)
    milestones.reach(0, "architecture search: deriving the search space")
    search = _Search(module, data, config, budget)
    search.prepare()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=[DIRECTIONS[o] for o in config.objectives],
        sampler=optuna.samplers.NSGAIISampler(population_size=_population(config), seed=config.seed),
    )
    original = search.space.original()
    stopped_by: Literal["trials", "time"] = "trials"
    trials_run = 0
    for number in range(config.n_trials):
        if (search.candidates or search.failures) and search.elapsed() >= budget:
            stopped_by = "time"
            break
        trial = study.ask()
        architecture = {
            d.name: int(trial.suggest_categorical(d.name, list(d.choices))) for d in search.space.dimensions
        }
        key = tuple(sorted(architecture.items()))
        trials_run += 1
        if architecture == original:
            study.tell(trial, search.source_values())
        elif key in search.seen:
            study.tell(trial, search.seen[key].objective_values(config.objectives))
        else:
            try:
                candidate = search.evaluate(number, architecture)
            except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the search
                search.failures[number] = first_line(exc)
                _log.warning("candidate failed", extra={"trial": number, "error": search.failures[number]})
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                search.seen[key] = candidate
                search.candidates.append(candidate)
                study.tell(trial, candidate.objective_values(config.objectives))
                search.keep_front_modules()
        milestones.reach(
            min(99.0, 100.0 * (number + 1) / config.n_trials),
            f"architecture search: trial {number + 1}/{config.n_trials}",
        )
    if not search.candidates:
        last = f"; last failure: {list(search.failures.values())[-1]}" if search.failures else ""
        raise OptimizationError(
            f"architecture search evaluated no smaller candidate in {trials_run} trials{last}",
            hint="raise n_trials or the time budget",
            detail={"failures": search.failures},
        )
    front = pareto_front(search.candidates, config.objectives)
    picked = pick_candidate(front, config.pick, config.min_fidelity, config.objectives)
    final = None
    if config.final_distill_steps > 0 and picked.module is not None and search.elapsed() < budget:
        report = distill_module(
            search.module,
            picked.module,
            data,
            steps=config.final_distill_steps,
            lr=config.distill_lr,
            batch_size=config.batch_size,
            time_budget_s=budget - search.elapsed(),
            seed=config.seed,
        )
        final = report.as_facts()
    assert picked.module is not None  # front members keep their modules
    source_ms, picked_ms = compare_latency(search.module, picked.module, search.sample, config.latency_runs)
    milestones.reach(99.0, f"architecture search: picked trial {picked.trial} ({stopped_by})")
    return SearchResult(
        space=search.space,
        left_out=search.left_out,
        candidates=search.candidates,
        front=front,
        picked=picked,
        source_params=search.source_params,
        source_latency_ms=source_ms,
        picked_latency_ms=picked_ms,
        trials_run=trials_run,
        stopped_by=stopped_by,
        seconds=search.elapsed(),
        final_distillation=final,
        failures=search.failures,
    )


def _population(config: ArchitectureSearchConfig) -> int:
    """NSGA-II population: the configured one, else a third of the trials (4 to 50)."""
    return config.population_size or max(4, min(50, config.n_trials // 3))


def _facts(result: SearchResult, config: ArchitectureSearchConfig) -> dict[str, Any]:
    picked = result.picked
    after = result.final_distillation["after"] if result.final_distillation else None
    return {
        "search_space": result.space.describe(),
        "space_size": result.space.size(),
        "dimensions_left_out": result.left_out,
        "objectives": list(config.objectives),
        "sampler": f"optuna NSGAIISampler(population_size={_population(config)}, seed={config.seed})",
        "latency_method": LATENCY_METHOD.format(runs=config.latency_runs),
        "trials_run": result.trials_run,
        "trials_planned": config.n_trials,
        "candidates_evaluated": len(result.candidates),
        "failed_trials": {str(k): v for k, v in result.failures.items()},
        "stopped_by": result.stopped_by,
        "seconds": round(result.seconds, 3),
        "trials": [c.as_fact() for c in result.candidates],
        "pareto": [c.as_fact() for c in result.front],
        "pick_rule": config.pick,
        "min_fidelity": config.min_fidelity,
        "picked": picked.as_fact(),
        "architecture": dict(picked.architecture),
        "params": picked.params,
        "source_params": result.source_params,
        "params_removed_fraction": 1.0 - picked.params / result.source_params,
        "latency_ms": round(result.picked_latency_ms, 4),
        "source_latency_ms": round(result.source_latency_ms, 4),
        "speedup": (
            result.source_latency_ms / result.picked_latency_ms if result.picked_latency_ms > 0 else None
        ),
        "fidelity_cosine": after["fidelity_cosine"] if after else picked.fidelity,
        "task_loss": after["task_loss"] if after else picked.task_loss,
        "final_distillation": result.final_distillation,
    }


@register(
    ArchitectureSearchConfig,
    TechniqueSpec(
        name="architecture_search",
        family=Family.ARCHITECTURE_SEARCH,
        summary="Search depth, heads, MLP widths and conv channels sliced from the trained weights (NSGA-II), "
        "distil each candidate briefly, and keep a Pareto-optimal smaller model.",
        needs=Needs(calibration_data=True, packages=("optuna",), install_hint="pip install optuna"),
        input_formats=TORCH_INPUTS,
        output_format=ModelFormat.TORCH_PICKLED_MODULE.value,
        runtimes=("torch-cpu", "torch-cuda"),
        precision="fp32",
        expected_effect="fewer parameters and lower latency at a fidelity floor, traded off on a measured "
        "Pareto front",
    ),
)
def _apply_architecture_search(ctx: TechniqueContext, config: ArchitectureSearchConfig) -> TechniqueProduct:
    module = ctx.require_module("architecture_search")
    data = ctx.require_calibration("architecture_search")

    def progress(percent: float, message: str) -> None:
        ctx.progress(min(percent, 95.0), message)

    result = search_architectures(module, data, config, time_budget_s=ctx.time_budget_s, progress=progress)
    return save_module_product(ctx, result.picked.module, _facts(result, config))  # type: ignore[arg-type]
