"""Closed-loop accuracy: the success rate of a model driving a simulator, with its 95% Wilson interval.

Episode `i` always uses seed `seed + i`, so a model before and after optimization is measured on the same
episodes (each episode's initial state is fingerprinted in the result to prove it). Episodes run in lockstep:
one batched forward pass (`run_outputs`, torch or ONNX Runtime alike) serves every episode still running.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Sequence

import numpy as np
import torch

from tools.errors import MeasurementError, ValidationError
from tools.evaluation.simulators import SimulatorPlugin, get_simulator
from tools.evaluation.types import AccuracyResult
from tools.inputs import InputSpec
from tools.intake import LoadedModel
from tools.log import get_logger
from tools.reference.reaching import wilson_interval
from tools.techniques.artifacts import run_outputs

logger = get_logger("evaluation")


def evaluate_closed_loop(
    model: LoadedModel,
    plugin: SimulatorPlugin | str,
    episodes: int,
    seed: int,
    *,
    batch_size: int | None = None,
) -> AccuracyResult:
    """Run `episodes` seeded episodes of `plugin` (or a simulator name) with `model`; return the success rate.

    `batch_size` caps how many episodes share one forward pass (default: all that are still running).
    """
    if episodes <= 0:
        raise ValidationError(f"episodes must be positive, got {episodes}")
    if batch_size is not None and batch_size <= 0:
        raise ValidationError(f"batch_size must be positive, got {batch_size}")
    plugin = get_simulator(plugin) if isinstance(plugin, str) else plugin
    plugin.bind(model.input_specs, model.metadata)
    started = time.perf_counter()
    seeds = [seed + index for index in range(episodes)]
    envs: list[Any] = []
    try:
        observations = []
        for episode_seed in seeds:
            env, observation = plugin.make_env(episode_seed)
            envs.append(env)
            observations.append(observation)
        starts = [state_fingerprint(plugin.initial_state(env, obs)) for env, obs in zip(envs, observations)]
        steps, calls = _run_lockstep(model, plugin, envs, observations, batch_size or episodes)
        outcomes = [plugin.is_success(env) for env in envs]
        facts = [plugin.episode_facts(env) for env in envs]
    finally:
        for env in envs:
            plugin.close(env)
    successes = int(sum(outcomes))
    records = [
        {"seed": s, "success": bool(ok), "steps": n, "initial_state": start, **extra}
        for s, ok, n, start, extra in zip(seeds, outcomes, steps, starts, facts)
    ]
    seconds = time.perf_counter() - started
    logger.info(
        "closed-loop %s: %d/%d episodes succeeded",
        plugin.name,
        successes,
        episodes,
        extra={"seconds": round(seconds, 2)},
    )
    return success_rate_result(
        successes,
        episodes,
        {
            "simulator": plugin.describe(),
            "seed": seed,
            "successes": successes,
            "mean_steps": float(np.mean(steps)),
            "model_calls": calls,
            "seconds": round(seconds, 3),
            "episodes": records,
        },
    )


def _run_lockstep(
    model: LoadedModel, plugin: SimulatorPlugin, envs: list[Any], observations: list[Any], batch_size: int
) -> tuple[list[int], int]:
    """Step every episode to its end; return the steps each took and the number of forward passes."""
    steps = [0] * len(envs)
    done = [False] * len(envs)
    calls = 0
    while True:
        active = [index for index, finished in enumerate(done) if not finished]
        if not active:
            return steps, calls
        for start in range(0, len(active), batch_size):
            group = active[start : start + batch_size]
            chunks = act_on_observations(model, plugin, [observations[index] for index in group])
            calls += 1
            for row, index in enumerate(group):
                for action in chunks[row, : plugin.actions_per_call]:
                    observations[index], finished = plugin.step(envs[index], action)
                    steps[index] += 1
                    if finished or steps[index] >= plugin.max_steps:
                        done[index] = True
                        break


def act_on_observations(model: LoadedModel, plugin: SimulatorPlugin, observations: list[Any]) -> np.ndarray:
    """One batched forward pass: observations -> model inputs -> outputs -> action chunks (B, K, ...)."""
    inputs = plugin.adapter(observations, model.input_specs)
    tensors = _to_tensors(inputs, model.input_specs)
    outputs = [tensor.numpy() for tensor in run_outputs(model, tensors)]
    chunks = np.asarray(plugin.action_from_outputs(outputs))
    if chunks.ndim < 2 or chunks.shape[0] != len(observations):
        raise MeasurementError(
            f"{plugin.name}: the model's actions have shape {chunks.shape}, "
            f"expected ({len(observations)}, K, ...)"
        )
    return chunks


def _to_tensors(inputs: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, torch.Tensor]:
    dtypes = {spec.name: spec.torch_dtype for spec in specs}
    tensors = {}
    for name, value in inputs.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        tensors[name] = tensor.to(dtypes[name]) if name in dtypes else tensor
    return tensors


def state_fingerprint(state: np.ndarray) -> str:
    """A short digest of an episode's initial state, rounded so that float noise does not change it."""
    rounded = np.round(np.asarray(state, dtype=np.float64), 9) + 0.0  # no negative zeros
    return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]


def success_rate_result(successes: int, episodes: int, details: dict[str, Any]) -> AccuracyResult:
    """A closed-loop success rate with its 95% Wilson interval."""
    low, high = wilson_interval(successes, episodes)
    return AccuracyResult(
        level="closed_loop",
        metric="success_rate",
        value=successes / episodes,
        higher_is_better=True,
        ci_low=low,
        ci_high=high,
        samples=episodes,
        details=details,
    )
