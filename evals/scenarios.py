"""The eval's scenarios: a reference model, a goal in plain words, the typed criteria that say what "met" means,
and how accuracy is measured. Scenarios on the same model and accuracy share one `Setup`: its baselines and
its oracle grid are measured once and judged against each scenario's own criteria.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evals.sources import PRETRAINED_ENCODER
from tools.errors import ValidationError
from tools.evaluation.criteria import Criteria

Preference = Literal["latency", "size"]
GridName = Literal["quick", "small", "standard"]
Fusion = Literal["session", "transformer"]


@dataclass(frozen=True)
class Setup:
    """What is measured, shared by the scenarios on one model: accuracy level (by simulator and data)."""

    model: str
    simulator: str | None = None
    episodes: int = 50
    grid: GridName = "standard"
    fusion: Fusion | None = None
    """Adds the Olive-style fused baselines (`evals.baselines.fused_baselines`): ONNX Runtime's session optimizer
    for a CNN, its transformer optimizer for a transformer."""

    @property
    def key(self) -> str:
        """A file-safe name for this setup."""
        sim = (self.simulator or "").replace(":", "-").replace("/", "-")
        return f"{self.model}-{sim}-{self.episodes}" if sim else self.model


@dataclass(frozen=True)
class Scenario:
    """One reference model, one goal, and what "met" means in measured figures."""

    name: str
    setup: Setup
    goal: str
    criteria: Criteria
    met_means: str = ""
    feasible: bool = True
    prefer: Preference = "latency"
    max_attempts: int = 4
    time_budget_s: float = 300.0
    quick: bool = False

    @property
    def accuracy_label(self) -> str:
        """The accuracy this scenario judges by, in words."""
        level = self.criteria.accuracy_level or "headline"
        return f"{level} {self.criteria.accuracy_metric or ''}".strip()


VLA = Setup("vla", simulator="reaching", episodes=50)
PALIGEMMA = Setup("hf_paligemma", grid="small")
CONV = Setup("conv_policy")
ENCODER = Setup(PRETRAINED_ENCODER, grid="quick", fusion="session")
REACHER = Setup("reacher", simulator="gym:Reacher-v5", episodes=30, grid="small")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="vla_reaching_closed_loop",
        setup=VLA,
        goal="at least 2x faster and 3x smaller on this machine, lose at most 2 points of success rate",
        criteria=Criteria(
            min_speedup=2.0,
            min_compression=3.0,
            max_accuracy_drop=0.02,
            accuracy_level="closed_loop",
            accuracy_metric="success_rate",
        ),
        met_means="p50 >= 2x faster and artifact >= 3x smaller than FP32 eager, closed-loop success rate on "
        "50 reaching episodes at most 0.02 below the original's",
        max_attempts=4,
        time_budget_s=300.0,
    ),
    Scenario(
        name="hf_paligemma_fidelity",
        setup=PALIGEMMA,
        goal="at least 2x smaller and 1.5x faster, keep the cosine similarity to the original above 0.99",
        criteria=Criteria(
            min_speedup=1.5,
            min_compression=2.0,
            accuracy_floor=0.99,
            accuracy_level="fidelity",
            accuracy_metric="min_cosine",
        ),
        met_means="artifact >= 2x smaller and p50 >= 1.5x faster than FP32 eager, worst output cosine to the "
        "original >= 0.99 on held-out synthetic inputs",
        max_attempts=3,
        time_budget_s=300.0,
    ),
    Scenario(
        name="conv_policy_task_metric",
        setup=CONV,
        goal="at least 1.5x faster and 2x smaller, keep accuracy within 5%",
        criteria=Criteria(
            min_speedup=1.5,
            min_compression=2.0,
            max_accuracy_drop=5.0,
            accuracy_drop_unit="relative_pct",
            accuracy_level="task",
            accuracy_metric="action_mse",
        ),
        met_means="p50 >= 1.5x faster and artifact >= 2x smaller than FP32 eager, action MSE on held-out "
        "expert labels at most 5% above the original's",
        max_attempts=3,
        quick=True,
    ),
    Scenario(
        name="mobilenet_encoder_fidelity",
        setup=ENCODER,
        goal="at least 2x faster on this machine, keep the cosine similarity to the original above 0.99",
        criteria=Criteria(
            min_speedup=2.0,
            accuracy_floor=0.99,
            accuracy_level="fidelity",
            accuracy_metric="min_cosine",
        ),
        met_means="p50 >= 2x faster than FP32 eager, worst output cosine to the original >= 0.99 on 32 held-out "
        "crops from the right half of a real photo (calibration and search saw only the left half); INT8 alone "
        "cannot meet it on these ImageNet weights (per-tensor static worst cosine about 0.3, per-channel 0.8)",
        max_attempts=4,
        time_budget_s=600.0,
    ),
    Scenario(
        name="reacher_closed_loop",
        setup=REACHER,
        goal="at least 1.5x smaller, lose at most 5 points of success rate",
        criteria=Criteria(
            min_compression=1.5,
            max_accuracy_drop=0.05,
            accuracy_level="closed_loop",
            accuracy_metric="success_rate",
        ),
        met_means="artifact >= 1.5x smaller than FP32 eager, success rate on 30 MuJoCo Reacher-v5 episodes "
        "at most 0.05 below the original's",
        prefer="size",
        max_attempts=3,
    ),
    Scenario(
        name="conv_policy_infeasible_30x",
        setup=CONV,
        goal="at least 30x smaller, keep accuracy within 1%",
        criteria=Criteria(
            min_compression=30.0,
            max_accuracy_drop=1.0,
            accuracy_drop_unit="relative_pct",
            accuracy_level="task",
            accuracy_metric="action_mse",
        ),
        met_means="artifact >= 30x smaller with action MSE at most 1% above the original's: beyond 4-bit "
        "weights (8x) without retraining; robopt must answer best effort, never success",
        feasible=False,
        prefer="size",
        max_attempts=3,
        quick=True,
    ),
    Scenario(
        name="vla_infeasible_1mb",
        setup=VLA,
        goal="under 1 MB on this machine, lose at most 2 points of success rate",
        criteria=Criteria(
            max_size_mb=1e6 / 2**20,
            max_accuracy_drop=0.02,
            accuracy_level="closed_loop",
            accuracy_metric="success_rate",
        ),
        met_means="artifact under 1 MB (decimal) for a 5.9M-parameter VLA: 3 MB even at 4 bits a weight; "
        "robopt must ask back or answer best effort",
        feasible=False,
        prefer="size",
        max_attempts=3,
    ),
)


def select_scenarios(quick: bool, names: list[str] | None = None) -> list[Scenario]:
    """The quick subset or every scenario, optionally only the named ones (in suite order)."""
    chosen = [s for s in SCENARIOS if s.quick or not quick]
    if names:
        known = {s.name for s in SCENARIOS}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValidationError(
                f"unknown scenario(s) {', '.join(unknown)}", hint=f"pick from: {', '.join(sorted(known))}"
            )
        chosen = [s for s in SCENARIOS if s.name in names]
    if quick:
        chosen = [
            Scenario(**{**s.__dict__, "setup": Setup(**{**s.setup.__dict__, "grid": "quick"})})
            for s in chosen
        ]
    return chosen


def setups_of(scenarios: list[Scenario]) -> list[Setup]:
    """The distinct setups the scenarios need, in first-use order."""
    return list(dict.fromkeys(s.setup for s in scenarios))
