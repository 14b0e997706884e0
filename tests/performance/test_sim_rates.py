"""Benchmark: step rates of LeRobot's simulators as robopt drives them (never fails on timing)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tools.evaluation.simulators import get_simulator

pytestmark = pytest.mark.performance
pytest.importorskip("gym_pusht", reason="the sim extra is not installed (pip install 'robopt[sim]')")

STEPS = {"pusht": 300, "aloha:fast": 60, "aloha": 20}


@pytest.mark.parametrize("name", list(STEPS))
def test_simulator_step_rate_prints_figures(name: str) -> None:
    if name.startswith("aloha"):
        pytest.importorskip(
            "gym_aloha", reason="gym-aloha is not installed (pip install --no-deps gym-aloha)"
        )
    plugin = get_simulator(name)
    started = time.perf_counter()
    env, _ = plugin.make_env(0)
    made_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    low, high = env.env.action_space.low, env.env.action_space.high
    steps = 0
    started = time.perf_counter()
    try:
        for steps in range(1, STEPS[name] + 1):
            action = low + (high - low) * rng.uniform(0.4, 0.6, size=low.shape)
            _, finished = plugin.step(env, action)
            if finished:
                break
    finally:
        plugin.close(env)
    seconds = time.perf_counter() - started
    assert steps > 0
    print(f"\n{name}: make_env {made_s:.2f} s, {steps / seconds:.1f} steps/s over {steps} steps")
