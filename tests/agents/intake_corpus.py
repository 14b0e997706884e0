"""The goal-intake corpus: chat goals with the criteria robopt must read from them, or the question to ask.

Shared by the intake tests and, later, the chat endpoint's tests: every bad case has `expect_question` or
`expect_error` and a `fragment` the question or error message contains. Sizes are written as the unit rule
they follow (decimal MB = 10^6 bytes, stored in MiB), so each expectation says how it was derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.intake import AccuracyKind, IntakeInput, ModelFacts

MIB = 2**20
CLOSED_LOOP = AccuracyKind(level="closed_loop", metric="success_rate", higher_is_better=True)
ACTION_MSE = AccuracyKind(level="task", metric="action_mse", higher_is_better=False)
FIDELITY_DEFAULT: dict[str, Any] = {
    "max_accuracy_drop": 1.0,
    "accuracy_drop_unit": "relative_pct",
    "accuracy_level": "fidelity",
    "accuracy_metric": "min_cosine",
}
"""The stated default when no accuracy limit is given and the job measures fidelity: 1% relative."""
CLOSED_LOOP_DEFAULT: dict[str, Any] = {
    "max_accuracy_drop": 0.02,
    "accuracy_drop_unit": "absolute",
    "accuracy_level": "closed_loop",
    "accuracy_metric": "success_rate",
}
"""The stated default in closed loop: 2 points of success rate."""


def mb(value: float) -> float:
    """MiB in `value` decimal megabytes."""
    return value * 1e6 / MIB


def gb(value: float) -> float:
    """MiB in `value` decimal gigabytes."""
    return value * 1e9 / MIB


def points(n: float, **extra: Any) -> dict[str, Any]:
    """An absolute drop of `n` points of success rate (1 point = 0.01)."""
    return {
        "max_accuracy_drop": n / 100,
        "accuracy_drop_unit": "absolute",
        "accuracy_level": "closed_loop",
        "accuracy_metric": "success_rate",
        **extra,
    }


def relative(pct: float, level: str = "fidelity", metric: str = "min_cosine") -> dict[str, Any]:
    """A relative drop of `pct` percent of the metric's baseline value."""
    return {
        "max_accuracy_drop": pct,
        "accuracy_drop_unit": "relative_pct",
        "accuracy_level": level,
        "accuracy_metric": metric,
    }


@dataclass(frozen=True)
class GoalCase:
    """One goal, its context, and what intake must answer: exact criteria, or a question, or an error."""

    name: str
    text: str
    criteria: dict[str, Any] = field(default_factory=dict)
    objective: str = "meet"
    targets: tuple[str, ...] = ("this-machine",)
    params: int | None = None
    accuracy: AccuracyKind | None = None
    default_target: str | None = None
    history: tuple[str, ...] = ()
    expect_question: bool = False
    expect_error: bool = False
    fragment: str = ""

    def payload(self) -> IntakeInput:
        """The intake input for this case."""
        return IntakeInput(
            text=self.text,
            history=list(self.history),
            model=ModelFacts(name="policy", params=self.params),
            accuracy=self.accuracy or AccuracyKind(),
            default_target=self.default_target,
        )


ORIN_NANO, ORIN_NX, NANO_SUPER = "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-orin-nano-super-8gb"

GOOD: list[GoalCase] = [
    GoalCase("size_mb", "under 50 MB", {"max_size_mb": mb(50), **FIDELITY_DEFAULT}),
    GoalCase(
        "latency_on_orin_nano",
        "below 20 ms on a Jetson Orin Nano",
        {"max_latency_ms": 20.0, "latency_target": ORIN_NANO, **FIDELITY_DEFAULT},
        targets=(ORIN_NANO,),
    ),
    GoalCase("within_one_percent", "keep accuracy within 1%", relative(1), objective="fastest"),
    GoalCase("four_x_smaller", "4x smaller", {"min_compression": 4.0, **FIDELITY_DEFAULT}),
    GoalCase("three_x_faster", "3x faster", {"min_speedup": 3.0, **FIDELITY_DEFAULT}),
    GoalCase(
        "fastest_two_points",
        "as fast as possible without losing more than 2 points of success rate",
        points(2),
        objective="fastest",
        accuracy=CLOSED_LOOP,
    ),
    GoalCase(
        "architecture_example",
        "under 2 GB and 100 ms on a Jetson Orin NX, lose at most 1 point of success rate",
        points(1, max_size_mb=gb(2), max_latency_ms=100.0, latency_target=ORIN_NX),
        targets=(ORIN_NX,),
        accuracy=CLOSED_LOOP,
        params=1_000_000_000,
    ),
    GoalCase("memory", "at most 500MB of memory", {"max_memory_mb": mb(500), **FIDELITY_DEFAULT}, "fastest"),
    GoalCase(
        "smallest_with_cosine",
        "smallest model with cosine above 0.99",
        {"accuracy_floor": 0.99, "accuracy_level": "fidelity", "accuracy_metric": "min_cosine"},
        objective="smallest",
    ),
    GoalCase("rate_hz", "10 Hz", {"max_latency_ms": 100.0, **FIDELITY_DEFAULT}),
    GoalCase("seconds", "latency < 0.05 s", {"max_latency_ms": 50.0, **FIDELITY_DEFAULT}),
    GoalCase("decimal_gb", "keep it under 1.5 GB", {"max_size_mb": gb(1.5), **FIDELITY_DEFAULT}),
    GoalCase("kilobytes", "under 512 KB", {"max_size_mb": 512e3 / MIB, **FIDELITY_DEFAULT}),
    GoalCase("mebibytes", "under 300 MiB", {"max_size_mb": 300.0, **FIDELITY_DEFAULT}),
    GoalCase(
        "negated_exceed_on_pi",
        "don't exceed 100 ms per step on the Raspberry Pi 5",
        {"max_latency_ms": 100.0, "latency_target": "raspberry-pi-5", **FIDELITY_DEFAULT},
        targets=("raspberry-pi-5",),
    ),
    GoalCase(
        "fps_and_relative_drop",
        "run at 30 fps on an AGX Orin, accuracy drop under 0.5%",
        {"max_latency_ms": 1000 / 30, "latency_target": "jetson-agx-orin-64gb", **relative(0.5)},
        targets=("jetson-agx-orin-64gb",),
    ),
    GoalCase(
        "percent_smaller_and_faster",
        "75% smaller and 50% faster",
        {"min_compression": 4.0, "min_speedup": 1.5, **FIDELITY_DEFAULT},
    ),
    GoalCase("retain_share", "keep at least 95% of the original accuracy", relative(5), objective="fastest"),
    GoalCase(
        "success_floor",
        "success rate above 80%",
        {"accuracy_floor": 0.8, "accuracy_level": "closed_loop", "accuracy_metric": "success_rate"},
        objective="fastest",
        accuracy=CLOSED_LOOP,
    ),
    GoalCase("fit_in_ram", "fit in 4 GB of RAM", {"max_memory_mb": gb(4), **FIDELITY_DEFAULT}, "fastest"),
    GoalCase(
        "slower_allowed",
        "at most 2x slower but 8x smaller",
        {"min_speedup": 0.5, "min_compression": 8.0, **FIDELITY_DEFAULT},
    ),
    GoalCase(
        "lossless",
        "lossless, 2x smaller",
        {"min_compression": 2.0, "max_accuracy_drop": 0.0, "accuracy_level": "fidelity"}
        | {"accuracy_metric": "min_cosine"},
    ),
    GoalCase(
        "two_targets",
        "under 20 ms on the Orin Nano Super and the Raspberry Pi 5",
        {"max_latency_ms": 20.0, "latency_target": NANO_SUPER, **FIDELITY_DEFAULT},
        targets=(NANO_SUPER, "raspberry-pi-5"),
    ),
    GoalCase(
        "default_target",
        "under 40 ms",
        {"max_latency_ms": 40.0, "latency_target": ORIN_NX, **FIDELITY_DEFAULT},
        targets=(ORIN_NX,),
        default_target="orin nx",
    ),
    GoalCase(
        "history_adds",
        "also under 20 ms on a Jetson Orin Nano",
        {"max_size_mb": mb(50), "max_latency_ms": 20.0, "latency_target": ORIN_NANO, **FIDELITY_DEFAULT},
        targets=(ORIN_NANO,),
        history=("under 50 MB",),
    ),
    GoalCase(
        "history_corrected",
        "under 60 MB",
        {"max_size_mb": mb(60), **FIDELITY_DEFAULT},
        history=("under 10 MB and at least 50 MB",),
    ),
    GoalCase(
        "mse_floor",
        "action MSE below 0.01",
        {"accuracy_floor": 0.01, "accuracy_level": "task", "accuracy_metric": "action_mse"},
        objective="fastest",
        accuracy=ACTION_MSE,
    ),
    GoalCase("plain_faster", "make it faster", FIDELITY_DEFAULT, objective="fastest"),
    GoalCase("plain_smaller", "make it smaller", FIDELITY_DEFAULT, objective="smallest"),
    GoalCase(
        "speedup_and_fidelity_drop",
        "Make it 2x faster on the Orin Nano Super without dropping more than 0.5% fidelity",
        {"min_speedup": 2.0, "latency_target": NANO_SUPER, **relative(0.5)},
        targets=(NANO_SUPER,),
    ),
    GoalCase(
        "mixed_list",
        "under 100MB, 2x faster, keep within 2 points of success rate",
        points(2, max_size_mb=mb(100), min_speedup=2.0),
        accuracy=CLOSED_LOOP,
    ),
    GoalCase(
        "closed_loop_default",
        "under 50 ms",
        {"max_latency_ms": 50.0, **CLOSED_LOOP_DEFAULT},
        accuracy=CLOSED_LOOP,
    ),
    GoalCase("cut_latency", "cut latency by 50%", {"min_speedup": 2.0, **FIDELITY_DEFAULT}),
    GoalCase(
        "big_model_fits_pi",
        "The 7B must run on a Raspberry Pi 5",
        {"latency_target": "raspberry-pi-5", **FIDELITY_DEFAULT},
        objective="fastest",
        targets=("raspberry-pi-5",),
        params=7_000_000_000,
    ),
    GoalCase(
        "thousands_on_laptop",
        "under 1,000 MB on my laptop",
        {"max_size_mb": mb(1000), "latency_target": "x86-laptop", **FIDELITY_DEFAULT},
        targets=("x86-laptop",),
    ),
    GoalCase(
        "two_points_not_percent",
        "lose at most 2 points",
        {"max_accuracy_drop": 0.02, "accuracy_drop_unit": "absolute", "accuracy_level": "fidelity"}
        | {"accuracy_metric": "min_cosine"},
        objective="fastest",
    ),
    GoalCase("two_percent_not_points", "lose at most 2%", relative(2), objective="fastest"),
]

BAD: list[GoalCase] = [
    GoalCase(
        "size_contradiction",
        "under 10 MB and at least 50 MB",
        expect_question=True,
        fragment="cannot both hold",
    ),
    GoalCase(
        "latency_contradiction",
        "below 20 ms and at least 30 ms",
        expect_question=True,
        fragment="cannot both hold",
    ),
    GoalCase(
        "faster_and_slower",
        "make it 3x faster, 2x slower is fine",
        expect_question=True,
        fragment="faster and also slower",
    ),
    GoalCase("zero_latency", "under 0 ms", expect_question=True, fragment="cannot be met"),
    GoalCase("negative_size", "under -5 MB", expect_question=True, fragment="cannot be met"),
    GoalCase("zero_ratio", "0x smaller", expect_question=True, fragment="cannot be met"),
    GoalCase(
        "seven_b_in_one_gb",
        "a 7B model in 1 GB",
        params=7_000_000_000,
        expect_question=True,
        fragment="even at 4 bits",
    ),
    GoalCase(
        "memory_too_small",
        "at most 500 MB of memory",
        params=7_000_000_000,
        expect_question=True,
        fragment="above the memory limit",
    ),
    GoalCase(
        "does_not_fit_target",
        "fit on an Orin Nano",
        params=14_000_000_000,
        expect_question=True,
        fragment="does not fit jetson-orin-nano-8gb",
    ),
    GoalCase(
        "unknown_jetson",
        "under 20 ms on a Jetson Xavier 9000",
        expect_question=True,
        fragment="Jetson Xavier 9000",
    ),
    GoalCase(
        "unknown_coral", "on a Coral Edge TPU under 10 ms", expect_question=True, fragment="Coral Edge TPU"
    ),
    GoalCase("nothing_there", "make it better", expect_question=True, fragment="could not find a goal"),
    GoalCase("garbage", "asdfgh qwerty", expect_question=True, fragment="could not find a goal"),
    GoalCase("wrong_side_floor", "cosine below 0.99", expect_question=True, fragment="wrong side"),
    GoalCase(
        "lossless_and_drop", "lossless but lose at most 1%", expect_question=True, fragment="no accuracy loss"
    ),
    GoalCase(
        "two_metrics",
        "cosine above 0.99 and lose at most 1 point of success rate",
        expect_question=True,
        fragment="two accuracy metrics",
    ),
    GoalCase("empty", "", expect_error=True, fragment="empty"),
    GoalCase("blank", "   \n ", expect_error=True, fragment="empty"),
    GoalCase(
        "unknown_default_target",
        "under 20 ms",
        default_target="xavier",
        expect_error=True,
        fragment="unknown target",
    ),
]
