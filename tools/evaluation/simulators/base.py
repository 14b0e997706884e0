"""The contract between closed-loop evaluation and a simulator: seeded episodes, inputs, actions, success.

A plugin owns everything task-specific; `tools.evaluation.closed_loop.evaluate_closed_loop` owns the loop
(lockstep batching, seeds, statistics), so every simulator is measured the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from tools.errors import ValidationError
from tools.inputs import InputSpec

Observation = Any
"""Whatever the simulator observes: a dict of arrays (reaching), a flat array (gymnasium Box), ..."""


class SimulatorPlugin(ABC):
    """A simulator that closed-loop evaluation can drive.

    Episode `seed` must always start from the same state, so that two models are compared on the very same
    episodes. `action_from_outputs` returns action chunks (B, K, ...); the loop executes the first
    `actions_per_call` actions of each chunk before asking the model again.
    """

    name: str = "simulator"
    max_steps: int = 1
    actions_per_call: int = 1
    success_definition: str = ""

    @abstractmethod
    def make_env(self, seed: int) -> tuple[Any, Observation]:
        """Create the environment of episode `seed`, reset it, and return it with its first observation."""

    @abstractmethod
    def step(self, env: Any, action: np.ndarray) -> tuple[Observation, bool]:
        """Apply one action; return the next observation and whether the episode has ended."""

    @abstractmethod
    def adapter(
        self, observations: Sequence[Observation], input_specs: Sequence[InputSpec]
    ) -> dict[str, np.ndarray]:
        """Turn a batch of observations into the model's named inputs (batch first, in the specs' dtypes)."""

    @abstractmethod
    def action_from_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Turn the model's outputs for a batch into action chunks shaped (B, K, *action_shape)."""

    @abstractmethod
    def is_success(self, env: Any) -> bool:
        """Whether the finished episode in `env` succeeded (see `success_definition`)."""

    def bind(self, input_specs: Sequence[InputSpec], metadata: dict[str, Any]) -> None:
        """Adapt to the model about to drive (observation history, actions per chunk); nothing by default."""

    def trajectory_state(self, env: Any) -> np.ndarray | None:
        """Return the state two trajectories are compared on, or None when the plugin cannot say."""
        return None

    def initial_state(self, env: Any, observation: Observation) -> np.ndarray:
        """Return what identifies an episode's start (default: its first observation)."""
        return flatten_observation(observation)

    def episode_facts(self, env: Any) -> dict[str, float]:
        """Return extra per-episode numbers worth reporting (a return, a final distance); none by default."""
        return {}

    def close(self, env: Any) -> None:
        """Release the environment's resources."""

    def describe(self) -> dict[str, Any]:
        """Return the plugin's settings for reports."""
        return {
            "name": self.name,
            "max_steps": self.max_steps,
            "actions_per_call": self.actions_per_call,
            "success": self.success_definition,
        }


def flatten_observation(observation: Observation) -> np.ndarray:
    """Concatenate an observation's arrays (dict values in key order) into one float64 vector."""
    if isinstance(observation, dict):
        parts = [np.asarray(observation[key], dtype=np.float64).reshape(-1) for key in sorted(observation)]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(observation, dtype=np.float64).reshape(-1)


def as_chunks(actions: np.ndarray, batch: int, action_ndim: int = 1) -> np.ndarray:
    """Give per-step actions (B, *action) a chunk axis (B, 1, *action); leave chunks (B, K, *action) alone."""
    actions = np.asarray(actions)
    if actions.ndim == 0 or actions.shape[0] != batch:
        raise ValidationError(
            f"the model's output has shape {actions.shape}; expected a leading batch axis of {batch}"
        )
    if actions.ndim == 1 + action_ndim:
        return actions[:, None]
    return actions


def numpy_dtype(spec: InputSpec) -> np.dtype:
    """The numpy dtype to feed an input in (bfloat16, which numpy lacks, is fed as float32)."""
    return np.dtype("float32") if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
