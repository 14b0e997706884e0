"""Goal intake: chat text -> typed criteria, the objective, stated defaults, or a question back.

The schemas below are the contract the graph, the CLI and the chat endpoint rely on. `parse_goal_rules` is the
offline parser (expert rules); `INTAKE` binds it with the prompt `prompts/intake.md` for the reasoners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents import goal_text as gt
from agents.base import AgentSpec
from tools.errors import NotFoundError, ValidationError
from tools.evaluation.criteria import Criteria
from tools.evaluation.priority import SearchPriority
from tools.evaluation.targets import (
    THIS_MACHINE,
    canonical_target_name,
    known_targets,
    preflight,
    weight_bytes_at,
)
from tools.evaluation.types import AccuracyLevel
from tools.log import get_logger

Objective = Literal["meet", "fastest", "smallest"]


class ModelFacts(BaseModel):
    """What intake knows of the model, so it can spot a goal that is impossible on its face."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(default="model", description="Display name (file or reference name).")
    format: str | None = None
    params: int | None = Field(default=None, ge=0)
    artifact_bytes: int | None = Field(default=None, ge=0, description="Bytes of the artifact as given.")
    architecture: str | None = Field(default=None, description="Detected pattern, e.g. 'vla', 'conv_policy'.")


class AccuracyKind(BaseModel):
    """The accuracy the job can measure (decided by what data and simulator the user gave)."""

    model_config = ConfigDict(frozen=True)

    level: AccuracyLevel = "fidelity"
    metric: str = Field(default="min_cosine", description="Headline metric at that level.")
    higher_is_better: bool = True


class IntakeInput(BaseModel):
    """The chat turn and its context."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="The user's goal, in their words (the latest chat message).")
    history: list[str] = Field(default_factory=list, description="Earlier user messages of the same chat.")
    model: ModelFacts = Field(default_factory=ModelFacts)
    accuracy: AccuracyKind = Field(default_factory=AccuracyKind)
    default_target: str | None = Field(default=None, description="Target named outside the text (--target).")


class GoalSpec(BaseModel):
    """The parsed goal: criteria to check, what to optimize beyond them, and what was assumed or unclear."""

    model_config = ConfigDict(frozen=True)

    criteria: Criteria = Field(default_factory=Criteria)
    objective: Objective = Field(
        default="meet",
        description="'meet': every criterion must pass, then the search keeps improving on the goal's priority "
        "while a candidate's predicted gain exceeds measurement noise; 'fastest'/'smallest': that priority is "
        "named outright ('as fast as possible').",
    )
    stop_at_first: bool = Field(
        default=False,
        description="Stop at the first version that meets every criterion, without searching for a better one "
        "('good enough', 'stop at the first version that meets it', --stop-at-first).",
    )
    targets: list[str] = Field(
        default_factory=list, description="Canonical target names to report on; includes the latency target."
    )
    assumptions: list[str] = Field(
        default_factory=list, description="Defaults chosen for what the text left out, one line each."
    )
    question: str | None = Field(
        default=None, description="Set when the goal contradicts itself or is impossible on its face."
    )

    @property
    def priority(self) -> SearchPriority:
        """What 'better' means once every criterion passes: latency for a speed goal, size for a size goal,
        else Pareto dominance (faster and no larger, or smaller and no slower)."""
        if self.objective == "fastest":
            return "latency"
        if self.objective == "smallest":
            return "size"
        speed = self.criteria.max_latency_ms is not None or self.criteria.min_speedup is not None
        size = self.criteria.max_size_mb is not None or self.criteria.min_compression is not None
        if speed != size:
            return "latency" if speed else "size"
        return "pareto"

    @property
    def needs_answer(self) -> bool:
        """True when intake asks the user a question instead of starting."""
        return self.question is not None


# --- rules ------------------------------------------------------------------------------------------------

log = get_logger("intake")
_MIB = 1024 * 1024
_EXAMPLE = "e.g. 'under 50 MB and 20 ms on a Jetson Orin Nano, lose at most 1% accuracy'"
_LIMITS = {"size": "max_size_mb", "memory": "max_memory_mb", "latency": "max_latency_ms"}
_DECIMAL_SIZE = re.compile(r"\d\s*-?\s*[kmgt]b|(?:kilo|mega|giga|tera)bytes?")


@dataclass
class _Reading:
    """What one chat message says: criteria fields, accuracy, objective, targets, and what is wrong."""

    fields: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    objective: Objective | None = None
    stop_at_first: bool = False
    targets: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recognised: bool = False


def _job_metric(job: AccuracyKind) -> gt.Metric:
    """The job's headline accuracy metric as (level, metric, higher_is_better)."""
    return (job.level, job.metric, job.higher_is_better)


def _default_drop(job: AccuracyKind) -> tuple[float, Literal["absolute", "relative_pct"]]:
    """The drop tolerated when the goal states none: 2 points of success rate in closed loop, else 1%."""
    return (0.02, "absolute") if job.level == "closed_loop" else (1.0, "relative_pct")


def _mib(raw: str, value: float) -> str:
    """Say how a size written in decimal units reads in MiB (the unit sizes are checked in)."""
    return f"'{raw}' read as decimal units ({value:,.0f} bytes = {value / _MIB:.4g} MiB, the unit checked)"


def _read_limits(reading: _Reading, statements: list[gt.Statement]) -> None:
    """Size, memory and latency: the strictest upper limit; a lower limit above it is a contradiction."""
    for noun, name in _LIMITS.items():
        found = [s for s in statements if s.kind == noun]
        bad = [s for s in found if s.value <= 0]
        for s in bad:
            reading.issues.append(
                f"A {noun} limit of '{s.raw}' cannot be met; give a positive limit, {_EXAMPLE}."
            )
        uppers = [s for s in found if s.bound == "max" and s.value > 0]
        lowers = [s for s in found if s.bound == "min" and s.value > 0]
        if uppers:
            limit = min(uppers, key=lambda s: s.value)
            reading.fields[name] = limit.value / (1.0 if noun == "latency" else _MIB)
            if noun != "latency" and _DECIMAL_SIZE.search(limit.raw):
                reading.notes.append(_mib(limit.raw, limit.value))
            if len({s.value for s in uppers}) > 1:
                reading.notes.append(f"several {noun} limits given; the strictest, '{limit.raw}', applies")
            clash = [s for s in lowers if s.value >= limit.value]
            if clash:
                reading.issues.append(
                    f"The goal asks for {noun} below '{limit.raw}' and at least '{clash[0].raw}' at once, "
                    f"which cannot both hold. Which {noun} limit applies? "
                    f"Say e.g. '{noun} under {limit.raw}'."
                )
        elif lowers:
            reading.notes.append(
                f"'{lowers[0].raw}' is a lower bound on {noun}; robopt only enforces upper limits"
            )


def _read_ratios(reading: _Reading, statements: list[gt.Statement]) -> None:
    """Compression and speed-up ratios: the highest minimum applies; zero or negative ones are refused."""
    for kind, name in (("compression", "min_compression"), ("speedup", "min_speedup")):
        found = [s for s in statements if s.kind == kind]
        for s in found:
            if s.value <= 0:
                reading.issues.append(
                    f"A {kind} of '{s.raw}' cannot be met; give a positive factor such as '4x'."
                )
        good = [s for s in found if s.value > 0]
        if good:
            reading.fields[name] = max(s.value for s in good)


def _read_accuracy(reading: _Reading, statements: list[gt.Statement], text: str, job: AccuracyKind) -> None:
    """Accuracy floor and tolerated drop, on one metric (the one named, else the job's)."""
    found = [s for s in statements if s.kind in ("floor", "drop")]
    lossless = gt.asks_lossless(text)
    if not found and not lossless:
        return
    metrics = {s.metric or _job_metric(job) for s in found} or {gt.find_metric(text) or _job_metric(job)}
    if len(metrics) > 1:
        names = " and ".join(sorted(m[1] for m in metrics))
        reading.issues.append(
            f"The goal limits two accuracy metrics ({names}); robopt judges one. Which one matters? "
            "Say e.g. 'lose at most 1 point of success rate'."
        )
    level, metric, higher = sorted(metrics)[0]
    acc: dict[str, Any] = {"accuracy_level": level, "accuracy_metric": metric}
    floors = [s for s in found if s.kind == "floor"]
    for s in floors:
        if s.bound != ("min" if higher else "max"):
            better = "higher" if higher else "lower"
            reading.issues.append(
                f"'{s.raw}' sets the wrong side of {metric}, where {better} is better. Did you mean "
                f"{metric} {'above' if higher else 'below'} {s.value:g}?"
            )
    if floors:
        acc["accuracy_floor"] = (max if higher else min)(s.value for s in floors)
    drops = [s for s in found if s.kind == "drop"]
    for s in [s for s in drops if s.value < 0 or (s.unit == "relative_pct" and s.value > 100)]:
        reading.issues.append(
            f"A tolerated accuracy drop of '{s.raw}' is not a drop between 0 and 100%; "
            "say e.g. 'lose at most 1%'."
        )
        drops.remove(s)
    if lossless and drops:
        reading.issues.append(
            f"The goal asks for no accuracy loss and also tolerates '{drops[0].raw}'. Which applies?"
        )
    units = {s.unit for s in drops}
    if len(units) > 1:
        reading.issues.append(
            f"The tolerated accuracy drop is given twice in different units ('{drops[0].raw}' and "
            f"'{drops[-1].raw}'). Which applies? Say e.g. 'lose at most 1%' or 'lose at most 1 point'."
        )
    if drops:
        acc["max_accuracy_drop"] = min(s.value for s in drops if s.unit == drops[0].unit)
        acc["accuracy_drop_unit"] = drops[0].unit
    elif lossless:
        acc["max_accuracy_drop"] = 0.0
        reading.notes.append(
            "'no accuracy loss' read as a tolerated drop of 0: any measured drop rejects a step"
        )
    needs = {"closed_loop": "a simulator (--sim reaching, or 'simulator' over HTTP)", "task": "labelled data"}
    if level != job.level and (level, job.level) != ("closed_loop", "closed_loop_agreement"):
        if level in needs:  # asked before anything runs: without it the job would end with no figure to judge
            reading.issues.append(
                f"The goal bounds {metric}, a {level} figure, but this job can only measure {job.level} "
                f"{job.metric}. Give it {needs[level]}, or bound what it measures, e.g. 'keep actions within 2%'."
            )
        else:
            reading.notes.append(
                f"{metric} is a {level} figure, but this job measures {job.level} {job.metric}; it can be "
                "checked only once that level can be measured"
            )
    reading.accuracy = acc


def _read_objective(reading: _Reading, text: str, statements: list[gt.Statement]) -> None:
    """'as fast as possible' / 'smallest', or a plain 'faster' / 'smaller' with no number to meet."""
    kinds = {s.kind for s in statements}
    wants = {
        "fastest": gt.FASTEST.search(text)
        or (gt.FASTER.search(text) if not kinds & {"latency", "speedup"} else None),
        "smallest": gt.SMALLEST.search(text)
        or (gt.SMALLER.search(text) if not kinds & {"size", "compression"} else None),
    }
    asked = sorted((m.start(), name) for name, m in wants.items() if m)
    if asked:
        reading.objective = asked[0][1]
        if len(asked) > 1:
            reading.notes.append(
                f"both speed and size asked to improve; optimizing for '{asked[0][1]}' first"
            )


def _read_message(text: str, job: AccuracyKind) -> _Reading:
    """Read one message into criteria fields, targets and issues."""
    norm = gt.normalize(text)
    mentions, blanked = gt.find_targets(norm)
    statements = gt.read_statements(blanked)
    reading = _Reading(targets=list(dict.fromkeys(m.canonical for m in mentions if m.canonical)))
    for unknown in [m for m in mentions if m.canonical is None]:
        known = ", ".join([THIS_MACHINE, *known_targets()])
        phrase = (
            text[unknown.start : unknown.start + len(unknown.phrase)]
            if len(text) == len(norm)
            else unknown.phrase
        )
        reading.issues.append(
            f"I don't know the target '{phrase}'. Known targets: {known}. Name one of them (e.g. 'on a "
            "Jetson Orin Nano'), or leave the target out to measure on this machine."
        )
    _read_limits(reading, statements)
    _read_ratios(reading, statements)
    _read_accuracy(reading, statements, blanked, job)
    _read_objective(reading, blanked, statements)
    reading.stop_at_first = bool(gt.STOP_AT_FIRST.search(blanked))
    if gt.asks_faster_and_slower(blanked):
        reading.issues.append(
            "The goal asks for the model to be faster and also slower. Which is it? Say e.g. '3x faster', or "
            "'at most 2x slower' if speed may be traded for size."
        )
    reading.recognised = bool(statements or mentions or reading.accuracy or reading.objective)
    if reading.stop_at_first:
        reading.notes.append(
            "stopping at the first version that meets every criterion, as asked (no search for a better one)"
        )
    return reading


def _count(params: int) -> str:
    """Parameters in words: 7B, 350M."""
    return f"{params / 1e9:.3g}B" if params >= 1e9 else f"{params / 1e6:.3g}M"


def _impossible(payload: IntakeInput, criteria: Criteria, targets: list[str]) -> list[str]:
    """Limits no technique can reach: int4 weights above the size or memory limit, or a target too small."""
    params, issues = payload.model.params, []
    if not params:
        return issues
    floor = weight_bytes_at(params, "int4")
    who = f"{payload.model.name} ({_count(params)} parameters)"
    for limit, noun in ((criteria.max_size_mb, "size"), (criteria.max_memory_mb, "memory")):
        if limit is not None and floor > limit * _MIB:
            issues.append(
                f"{who} takes {floor / 1e9:.3g} GB ({floor / _MIB:,.0f} MiB) even at 4 bits a weight, "
                f"above the {noun} limit of {limit:,.4g} MiB. Allow at least {floor / 1e9 * 1.1:.2g} GB, "
                "or start from a smaller model."
            )
    profiles = known_targets()
    for name in targets:
        if name in profiles:
            check = preflight(profiles[name], "int4", params=params)
            if not check.fits:
                issues.append(
                    f"{who} does not fit {name} even at 4 bits a weight: {check.reasons[0]}. Choose a larger "
                    "target (e.g. 'on a Jetson AGX Orin'), or start from a smaller model."
                )
    return issues


def parse_goal_rules(payload: IntakeInput) -> GoalSpec:
    """Read the goal with expert rules: criteria, objective, targets, stated defaults, or a question back.

    Earlier messages of the chat give the base; the latest message overrides what it restates. Only the latest
    message's own problems become a question.
    """
    if not payload.text.strip():
        raise ValidationError("the goal is empty", hint=f"say what matters, {_EXAMPLE}")
    job = payload.accuracy
    readings = [_read_message(m, job) for m in payload.history if m.strip()]
    latest = _read_message(payload.text, job)
    fields: dict[str, Any] = {}
    accuracy, objective, targets = None, None, []
    stop_at_first = any(r.stop_at_first for r in [*readings, latest])
    for reading in [*readings, latest]:
        fields.update(reading.fields)
        accuracy, objective = reading.accuracy or accuracy, reading.objective or objective
        targets = reading.targets or targets
    assumptions = list(latest.notes)
    if not targets:
        default = canonical_target_name(payload.default_target) if payload.default_target else THIS_MACHINE
        targets = [default]
        assumptions.append(
            f"no target in the goal: using {default}, given with the job"
            if payload.default_target
            else "no target named: latency is measured on this machine"
        )
    elif len(targets) > 1 and "max_latency_ms" in fields:
        assumptions.append(f"the latency limit applies to {targets[0]}, the first target named")
    if accuracy is None:
        drop, unit = _default_drop(job)
        accuracy = {
            "accuracy_level": job.level,
            "accuracy_metric": job.metric,
            "max_accuracy_drop": drop,
            "accuracy_drop_unit": unit,
        }
        amount = f"{drop * 100:g} points" if unit == "absolute" else f"{drop:g}% (relative)"
        assumptions.append(
            f"no accuracy limit stated: tolerating a drop of {amount} of {job.level} {job.metric}"
        )
    if objective is None and not {"max_size_mb", "max_latency_ms", "min_speedup", "min_compression"} & set(
        fields
    ):
        objective = "fastest"
        assumptions.append("no size, latency, speed-up or compression asked: making it as fast as possible")
    criteria = Criteria(**fields, **accuracy, latency_target=targets[0])
    issues = list(latest.issues) + _impossible(payload, criteria, targets)
    if not issues and not any(r.recognised for r in [*readings, latest]):
        issues.append(
            f"I could not find a goal in '{payload.text.strip()[:80]}'. What matters most: size "
            "(e.g. 'under 50 MB'), latency (e.g. 'under 20 ms on a Jetson Orin Nano'), or accuracy "
            "(e.g. 'lose at most 1%')? "
            "Or say 'as fast as possible'."
        )
    spec = GoalSpec(
        criteria=criteria,
        objective=objective or "meet",
        stop_at_first=stop_at_first,
        targets=targets,
        assumptions=assumptions,
        question=" ".join(issues) or None,
    )
    log.info(
        "goal read",
        extra={
            "component": "intake",
            "objective": spec.objective,
            "stop_at_first": spec.stop_at_first,
            "asks": spec.needs_answer,
        },
    )
    return spec


# --- check ------------------------------------------------------------------------------------------------

_FIELD_WORDS = {
    "max_size_mb": "size",
    "max_latency_ms": "latency",
    "max_memory_mb": "memory",
    "min_speedup": "speed",
    "min_compression": "compression",
    "accuracy_floor": "accuracy",
}


def check_goal(payload: IntakeInput, spec: GoalSpec) -> None:
    """Refuse a goal naming unknown or unasked targets, or a criterion of a kind the text never mentions."""
    text = gt.normalize(" ".join([*payload.history, payload.text]))
    named = {m.canonical for m in gt.find_targets(text)[0] if m.canonical} | {THIS_MACHINE}
    if payload.default_target:
        named.add(canonical_target_name(payload.default_target))
    for target in spec.targets:
        try:
            canonical = canonical_target_name(target)
        except NotFoundError as exc:
            raise ValidationError(f"unknown target {target!r} in the goal", hint=exc.hint) from None
        if canonical != target:
            raise ValidationError(f"target {target!r} is not a canonical name", hint=f"use {canonical!r}")
        if target not in named:
            raise ValidationError(
                f"target {target} is not named in the goal", hint="list only targets the user named"
            )
    if spec.criteria.latency_target not in spec.targets:
        raise ValidationError(
            f"latency target {spec.criteria.latency_target} is missing from targets {spec.targets}",
            hint="targets must include the latency target",
        )
    if spec.stop_at_first and not gt.STOP_AT_FIRST.search(text):
        raise ValidationError(
            "stop_at_first is set but the goal never asks to stop at the first version that meets it",
            hint="leave stop_at_first false unless the user says 'good enough' or 'stop at the first'",
        )
    words = gt.criterion_words(text)
    for name, kind in _FIELD_WORDS.items():
        value = getattr(spec.criteria, name)
        if value is not None and kind not in words:
            raise ValidationError(
                f"criterion {name}={value:g} is not in the goal: the text never mentions {kind}",
                hint="set only the criteria the user asked for; leave the others unset",
            )
    if "accuracy" not in words and spec.criteria.max_accuracy_drop is not None:
        drop, unit = _default_drop(payload.accuracy)
        stated = (
            spec.criteria.max_accuracy_drop,
            spec.criteria.accuracy_drop_unit,
            spec.criteria.accuracy_metric,
        )
        if stated != (drop, unit, payload.accuracy.metric):
            raise ValidationError(
                f"accuracy drop {stated[0]:g} ({stated[1]}) on {stated[2]} is not in the goal",
                hint=f"no accuracy limit stated: use the default, {drop:g} ({unit}) of "
                f"{payload.accuracy.metric}",
            )


INTAKE: AgentSpec[IntakeInput, GoalSpec] = AgentSpec(
    name="intake",
    prompt="intake",
    input_type=IntakeInput,
    output_type=GoalSpec,
    rules=parse_goal_rules,
    check=check_goal,
)
