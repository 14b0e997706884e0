"""Shared builders for graph tests: a stored reference VLA job, event capture, a scripted fake reasoner."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import psutil

from agents.base import AgentSpec, Decision, RuleReasoner
from agents.intake import ModelFacts
from graph.events import Event
from graph.state import DataSource, JobOptions
from tools.evaluation.evaluate import AccuracyPlan
from tools.versions import ArtifactRef, VersionStore


def store_reference(data_dir: Path, reference_dir: Path, job_id: str, name: str = "vla") -> ArtifactRef:
    """Store a built reference model as version 1 of `job_id` and return its reference."""
    from tools.reference import reference_model_file
    from tools.techniques import store_original

    path, options = reference_model_file(name, reference_dir)
    store = VersionStore(data_dir / "versions")
    manifest = store_original(store, job_id, path, options, data_dir)
    return store.ref(job_id, manifest.id)


def vla_options(**overrides: Any) -> JobOptions:
    """Closed-loop success on the reaching task (50 episodes), reaching observations as data."""
    base: dict[str, Any] = {
        "model": ModelFacts(name="vla", format="torch_pickled_module", params=5_930_000),
        "accuracy": AccuracyPlan(level="closed_loop", simulator="reaching", episodes=50),
        "data": DataSource(kind="reference", task="reaching"),
        "max_attempts": 4,
        "time_budget_s": 600.0,
        "latency_iterations": 20,
    }
    return JobOptions(**{**base, **overrides})


class EventLog:
    """A subscriber that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, type: str, **match: Any) -> list[Event]:
        """Events of a type whose data has the given values."""
        return [
            e for e in self.events if e.type == type and all(e.data.get(k) == v for k, v in match.items())
        ]


class ScriptedReasoner(RuleReasoner):
    """A fake reasoner: answers some agents from a script (checked like any output), the rest with the rules."""

    name = "scripted"

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = {agent: deque(outputs) for agent, outputs in script.items()}

    async def decide(self, agent: AgentSpec[Any, Any], payload: Any) -> Decision[Any]:
        queue = self.script.get(agent.name)
        if queue:
            output = agent.output_type.model_validate(queue.popleft())
            if agent.check is not None:
                agent.check(payload, output)
            return Decision(output=output, source="llm", reasoner=self.name)
        return await super().decide(agent, payload)


def attempt_children() -> list[psutil.Process]:
    """Processes running an attempt: the children of this process's fork server (which inherit its command
    line), not the fork server itself or the resource tracker."""
    found = []
    for child in psutil.Process(os.getpid()).children():
        try:
            if "forkserver" in " ".join(child.cmdline()):
                found += child.children()
        except psutil.Error:
            continue
    return found
