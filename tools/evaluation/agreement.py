"""Closed-loop action agreement: how closely a candidate acts like the original on the same seeded episodes.

With random (or unknown) weights a success rate says nothing, so the candidate is judged against the
original in the simulator itself:
- **Per-step action error.** The original drives; at each re-plan both models see the same observation and
  the actions that get executed are compared over all executed steps: the normalized error (L2 of the
  differences over L2 of the original's actions about their mean, so an offset such as PushT's pixel
  coordinates around 256 does not hide errors), the plain relative L2, max and mean abs error.
- **Trajectory divergence.** The candidate drives the same seeds; the distance between the two runs'
  simulator states (`plugin.trajectory_state`) is taken step by step (a finished run keeps its last state).

The headline is `action_agreement` = max(0, 1 - normalized error): 1 for identical actions, higher is better,
so "within 2%" means the actions moved by at most 2% of their own variation. Both runs' success rates come along, and
`success_figure` turns the candidate's into the usual closed-loop figure. Model calls are seeded per call, so
stochastic samplers (diffusion) draw the same noise for both models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tools.errors import ValidationError
from tools.evaluation.closed_loop import act_on_observations, state_fingerprint, success_rate_result
from tools.evaluation.simulators import SimulatorPlugin, get_simulator
from tools.evaluation.types import AccuracyResult
from tools.intake import LoadedModel
from tools.log import get_logger

logger = get_logger("evaluation")
SEED_STRIDE = 1_000_003
"""Model call `c` of a run seeded `s` runs under torch seed `s * SEED_STRIDE + c`."""


@dataclass
class _Run:
    """One driven pass over the episodes: states per step, executed actions, outcomes."""

    states: list[list[np.ndarray]]
    steps: list[int]
    successes: list[bool]
    starts: list[str]
    calls: int = 0
    errors: list[list[np.ndarray]] = field(default_factory=list)
    executed: list[list[np.ndarray]] = field(default_factory=list)


def evaluate_closed_loop_agreement(
    reference: LoadedModel,
    candidate: LoadedModel,
    plugin: SimulatorPlugin | str,
    episodes: int,
    seed: int,
) -> AccuracyResult:
    """Drive `episodes` seeded episodes with the original, then with the candidate; compare actions and states."""
    if episodes <= 0:
        raise ValidationError(f"episodes must be positive, got {episodes}")
    plugin = get_simulator(plugin) if isinstance(plugin, str) else plugin
    plugin.bind(reference.input_specs, reference.metadata)
    started = time.perf_counter()
    seeds = [seed + index for index in range(episodes)]
    led = _drive(plugin, seeds, reference, candidate)
    followed = _drive(plugin, seeds, candidate, None)
    if led.starts != followed.starts:
        raise ValidationError(f"{plugin.name}: the same seeds started different episodes; it is not seeded")
    errors = np.concatenate([np.stack(e) for e in led.errors if e])
    executed = np.concatenate([np.stack(a) for a in led.executed if a])
    relative_l2 = float(np.linalg.norm(errors) / max(float(np.linalg.norm(executed)), 1e-12))
    normalized = _normalized_error(errors, executed)
    divergence = _divergence(led.states, followed.states)
    seconds = time.perf_counter() - started
    details: dict[str, Any] = {
        "simulator": plugin.describe(),
        "seed": seed,
        "action_normalized_error": normalized,
        "action_relative_l2": relative_l2,
        "action_max_abs_error": float(np.abs(errors).max()),
        "action_mean_abs_error": float(np.abs(errors).mean()),
        "action_scale": float(np.abs(executed).max()),
        "compared_steps": int(errors.shape[0]),
        "trajectory_divergence": divergence,
        "original_success_rate": float(np.mean(led.successes)),
        "candidate_success_rate": float(np.mean(followed.successes)),
        "candidate_successes": int(sum(followed.successes)),
        "model_calls": led.calls + followed.calls,
        "seconds": round(seconds, 3),
        "episodes": [
            {
                "seed": s,
                "initial_state": start,
                "action_relative_l2": _relative(e, a),
                "steps_original": n_led,
                "steps_candidate": n_followed,
                "success_original": bool(ok_led),
                "success_candidate": bool(ok_followed),
            }
            for s, start, e, a, n_led, n_followed, ok_led, ok_followed in zip(
                seeds,
                led.starts,
                led.errors,
                led.executed,
                led.steps,
                followed.steps,
                led.successes,
                followed.successes,
            )
        ],
    }
    logger.info(
        "closed-loop agreement %s: normalized action error %.4g over %d steps",
        plugin.name,
        normalized,
        errors.shape[0],
        extra={"component": "evaluation", "seconds": round(seconds, 2)},
    )
    return AccuracyResult(
        level="closed_loop_agreement",
        metric="action_agreement",
        value=max(0.0, 1.0 - normalized),
        higher_is_better=True,
        samples=int(errors.shape[0]),
        details=details,
    )


def success_figure(agreement: AccuracyResult) -> AccuracyResult:
    """The candidate-driven runs' success rate as a closed-loop figure (same episodes, same seeds)."""
    details = agreement.details
    episodes = len(details["episodes"])
    successes = int(details["candidate_successes"])
    return success_rate_result(
        successes,
        episodes,
        {"simulator": details["simulator"], "seed": details["seed"], "successes": successes},
    )


def _drive(
    plugin: SimulatorPlugin, seeds: list[int], driver: LoadedModel, shadow: LoadedModel | None
) -> _Run:
    """Run every episode in lockstep with `driver` acting; `shadow`, if given, acts on the same observations."""
    envs: list[Any] = []
    try:
        observations = []
        for episode_seed in seeds:
            env, observation = plugin.make_env(episode_seed)
            envs.append(env)
            observations.append(observation)
        run = _Run(
            states=[[_state(plugin, env)] for env in envs],
            steps=[0] * len(envs),
            successes=[],
            starts=[
                state_fingerprint(plugin.initial_state(env, obs)) for env, obs in zip(envs, observations)
            ],
            errors=[[] for _ in envs],
            executed=[[] for _ in envs],
        )
        done = [False] * len(envs)
        while not all(done):
            group = [index for index, finished in enumerate(done) if not finished]
            batch = [observations[index] for index in group]
            chunks = _seeded_act(driver, plugin, batch, seeds[0], run.calls)
            shadows = _seeded_act(shadow, plugin, batch, seeds[0], run.calls) if shadow else None
            if shadows is not None and shadows.shape != chunks.shape:
                raise ValidationError(
                    f"the candidate's action chunks have shape {shadows.shape}, the original's {chunks.shape}"
                )
            run.calls += 1
            for row, index in enumerate(group):
                for position, action in enumerate(chunks[row, : plugin.actions_per_call]):
                    if shadows is not None:
                        run.errors[index].append(shadows[row, position] - action)
                        run.executed[index].append(action)
                    observations[index], finished = plugin.step(envs[index], action)
                    run.steps[index] += 1
                    run.states[index].append(_state(plugin, envs[index]))
                    if finished or run.steps[index] >= plugin.max_steps:
                        done[index] = True
                        break
        run.successes = [plugin.is_success(env) for env in envs]
        return run
    finally:
        for env in envs:
            plugin.close(env)


def _seeded_act(
    model: LoadedModel, plugin: SimulatorPlugin, observations: list[Any], seed: int, call: int
) -> np.ndarray:
    """One forward pass under a seed fixed by the run and the call index (same noise for both models)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * SEED_STRIDE + call)
        return np.asarray(act_on_observations(model, plugin, observations), dtype=np.float64)


def _state(plugin: SimulatorPlugin, env: Any) -> np.ndarray:
    state = plugin.trajectory_state(env)
    return np.zeros(0) if state is None else np.asarray(state, dtype=np.float64).reshape(-1)


def _divergence(led: list[list[np.ndarray]], followed: list[list[np.ndarray]]) -> dict[str, Any]:
    """Distance between the two runs' states step by step; the shorter run is held at its last state."""
    if not led or led[0][0].size == 0:
        return {"available": False}
    per_episode = []
    for a, b in zip(led, followed):
        length = max(len(a), len(b))
        a = np.stack(a + [a[-1]] * (length - len(a)))
        b = np.stack(b + [b[-1]] * (length - len(b)))
        distance = np.linalg.norm(a - b, axis=1)
        spread = float(np.linalg.norm(a - a[0], axis=1).mean())
        per_episode.append((distance, spread))
    means = [float(d.mean()) for d, _ in per_episode]
    spreads = [s for _, s in per_episode]
    return {
        "available": True,
        "mean": float(np.mean(means)),
        "max": float(max(d.max() for d, _ in per_episode)),
        "final": float(np.mean([d[-1] for d, _ in per_episode])),
        "relative_to_motion": float(np.mean(means) / max(np.mean(spreads), 1e-12)),
        "per_episode_mean": means,
        "unit": "the plugin's trajectory_state units (see the simulator)",
    }


def _normalized_error(errors: np.ndarray, executed: np.ndarray) -> float:
    """L2 of the errors over L2 of the executed actions about their per-dimension mean (plain L2 if constant)."""
    spread = float(np.linalg.norm(executed - executed.mean(axis=0)))
    if spread <= 1e-9 * max(float(np.linalg.norm(executed)), 1e-12):
        spread = float(np.linalg.norm(executed))
    return float(np.linalg.norm(errors) / max(spread, 1e-12))


def _relative(errors: list[np.ndarray], actions: list[np.ndarray]) -> float | None:
    if not errors:
        return None
    return float(np.linalg.norm(np.stack(errors)) / max(float(np.linalg.norm(np.stack(actions))), 1e-12))
