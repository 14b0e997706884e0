"""The procedural reaching task of the reference policies as a closed-loop simulator plugin.

Episodes, rendering and success are `tools.reference.reaching.ReachingEnv`'s, and the defaults match how the
reference builds measure themselves (`rollout_success`: re-plan every 4 actions of an 8-action chunk), so a
model's figure here is directly comparable with the `closed_loop` metric recorded in its `reference.json`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tools.errors import ValidationError
from tools.evaluation.simulators.base import SimulatorPlugin, as_chunks, numpy_dtype
from tools.inputs import InputSpec
from tools.reference.reaching import Observation, ReachingConfig, ReachingEnv

DEFAULT_ACTIONS_PER_CALL = 4


class ReachingPlugin(SimulatorPlugin):
    """Closed-loop reaching: the model sees image, instruction and end-effector position, and moves it."""

    def __init__(
        self,
        config: ReachingConfig | None = None,
        actions_per_call: int = DEFAULT_ACTIONS_PER_CALL,
        name: str = "reaching",
    ) -> None:
        if actions_per_call <= 0:
            raise ValidationError(f"actions_per_call must be positive, got {actions_per_call}")
        self.config = config or ReachingConfig()
        self.name = name
        self.max_steps = self.config.horizon
        self.actions_per_call = actions_per_call
        self.success_definition = (
            f"end-effector within {self.config.success_radius} of the named target "
            f"within {self.config.horizon} steps"
        )

    def make_env(self, seed: int) -> tuple[ReachingEnv, Observation]:
        """Create and reset the reaching episode drawn from `seed`."""
        env = ReachingEnv(self.config)
        return env, env.reset(seed)

    def step(self, env: ReachingEnv, action: np.ndarray) -> tuple[Observation, bool]:
        """Move the end-effector by one (capped) delta."""
        observation = env.step(action)
        return observation, env.done

    def adapter(
        self, observations: Sequence[Observation], input_specs: Sequence[InputSpec]
    ) -> dict[str, np.ndarray]:
        """Stack the observation arrays the model takes (by input name) into batches of the specs' dtypes."""
        available = set(observations[0])
        missing = [spec.name for spec in input_specs if spec.name not in available]
        if missing:
            raise ValidationError(
                f"the reaching task observes {sorted(available)}; the model also needs {missing}",
                hint="use a model whose inputs are named like the reaching observation",
            )
        return {
            spec.name: np.stack([observation[spec.name] for observation in observations]).astype(
                numpy_dtype(spec), copy=False
            )
            for spec in input_specs
        }

    def action_from_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Read the first output as action chunks (B, K, 2); a single action (B, 2) becomes a chunk of one."""
        actions = np.asarray(outputs[0], dtype=np.float32)
        batch = actions.shape[0] if actions.ndim else 0
        chunks = as_chunks(actions, batch)
        if chunks.ndim != 3 or chunks.shape[2] != 2:
            raise ValidationError(
                f"the model's output has shape {actions.shape}; expected (B, K, 2) or (B, 2)"
            )
        return chunks

    def is_success(self, env: ReachingEnv) -> bool:
        """Whether the end-effector reached the named target before the horizon."""
        return bool(env.success)

    def initial_state(self, env: ReachingEnv, observation: Observation) -> np.ndarray:
        """Targets, goal index and start position: what makes two episodes the same episode."""
        return np.concatenate([env.targets.reshape(-1), [env.goal_index], env.effector]).astype(np.float64)

    def episode_facts(self, env: ReachingEnv) -> dict[str, float]:
        """Final distance from the end-effector to the named target."""
        return {"final_distance": float(np.linalg.norm(env.effector - env.goal))}
