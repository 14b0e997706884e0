"""Any gymnasium environment as a closed-loop simulator plugin, with a generic adapter for flat observations.

The generic adapter feeds the flattened observation to the model's single input (or the input named by
`input_name`); Box actions are clipped to the action space, Discrete ones are the argmax of the model's
scores.
Success is a predicate on the finished episode; without one, the environment's registered reward threshold
(`env.spec.reward_threshold`) on the episode return is used, and an environment without either is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tools.errors import MissingDependencyError, NotFoundError, ValidationError
from tools.evaluation.simulators.base import SimulatorPlugin, as_chunks, numpy_dtype
from tools.inputs import InputSpec


@dataclass
class GymEpisode:
    """One running gymnasium episode: the env and what has happened so far."""

    env: Any
    seed: int
    total_reward: float = 0.0
    steps: int = 0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


SuccessPredicate = Callable[[GymEpisode], bool]


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise MissingDependencyError(
            "gymnasium environments need the gymnasium package", hint="pip install 'gymnasium[mujoco]'"
        ) from None
    return gymnasium


class GymPlugin(SimulatorPlugin):
    """A gymnasium environment by id; episode `seed` is `env.reset(seed=seed)`."""

    def __init__(
        self,
        env_id: str,
        *,
        success: SuccessPredicate | None = None,
        success_definition: str | None = None,
        max_steps: int | None = None,
        input_name: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        gymnasium = _gymnasium()
        try:
            spec = gymnasium.spec(env_id)
        except gymnasium.error.Error as exc:
            raise NotFoundError(
                f"gymnasium has no environment {env_id!r}: {exc}",
                hint="use a registered id such as 'Reacher-v5' or 'CartPole-v1'",
            ) from None
        self.env_id = env_id
        self.name = f"gym:{env_id}"
        self.env_kwargs = dict(env_kwargs or {})
        self.input_name = input_name
        limit = max_steps or spec.max_episode_steps
        if not limit or limit <= 0:
            raise ValidationError(
                f"{env_id} has no episode time limit; pass max_steps", hint="e.g. max_steps=500"
            )
        self.max_steps = int(limit)
        self.actions_per_call = 1
        if success is None:
            threshold = spec.reward_threshold
            if threshold is None:
                raise ValidationError(
                    f"{env_id} registers no reward threshold, so success is undefined",
                    hint="pass success=<predicate on the finished GymEpisode>",
                )
            success = lambda episode: episode.total_reward >= threshold  # noqa: E731
            success_definition = (
                success_definition or f"episode return >= {threshold} (the registered threshold)"
            )
        self.success = success
        self.success_definition = success_definition or "custom success predicate"

    def make_env(self, seed: int) -> tuple[GymEpisode, np.ndarray]:
        """Create the environment and reset it to episode `seed` (the action space is seeded too)."""
        gymnasium = _gymnasium()
        try:
            env = gymnasium.make(self.env_id, max_episode_steps=self.max_steps, **self.env_kwargs)
        except gymnasium.error.DependencyNotInstalled as exc:
            raise MissingDependencyError(
                f"gymnasium cannot create {self.env_id}: {exc}", hint="pip install 'gymnasium[mujoco]'"
            ) from None
        observation, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        return GymEpisode(env=env, seed=seed, info=dict(info)), observation

    def step(self, env: GymEpisode, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Decode the action for the action space, step, and accumulate the return."""
        observation, reward, terminated, truncated, info = env.env.step(
            self._decode(env.env.action_space, action)
        )
        env.total_reward += float(reward)
        env.steps += 1
        env.terminated, env.truncated, env.info = bool(terminated), bool(truncated), dict(info)
        return observation, env.terminated or env.truncated

    def adapter(
        self, observations: Sequence[np.ndarray], input_specs: Sequence[InputSpec]
    ) -> dict[str, np.ndarray]:
        """Feed flattened observations (B, D) to the model's one input, reshaped to its per-sample shape."""
        spec = self._input_spec(input_specs)
        batch = np.stack([np.asarray(observation).reshape(-1) for observation in observations])
        sample_shape = tuple(spec.shape[1:])
        if int(np.prod(sample_shape)) != batch.shape[1]:
            raise ValidationError(
                f"{self.env_id} observes {batch.shape[1]} numbers; input {spec.name!r} takes "
                f"{sample_shape} per sample",
                hint="use a model trained on this environment's observations",
            )
        return {spec.name: batch.reshape((len(observations), *sample_shape)).astype(numpy_dtype(spec))}

    def action_from_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Read the first output as one action (or one row of action scores) per episode."""
        actions = np.asarray(outputs[0], dtype=np.float32)
        return as_chunks(actions, actions.shape[0] if actions.ndim else 0)

    def is_success(self, env: GymEpisode) -> bool:
        """Apply the success predicate to the finished episode."""
        return bool(self.success(env))

    def initial_state(self, env: GymEpisode, observation: np.ndarray) -> np.ndarray:
        """The full simulator state for MuJoCo envs (qpos, qvel), else the first observation."""
        data = getattr(env.env.unwrapped, "data", None)
        if data is not None and hasattr(data, "qpos"):
            return np.concatenate([np.asarray(data.qpos), np.asarray(data.qvel)]).astype(np.float64)
        return super().initial_state(env, observation)

    def episode_facts(self, env: GymEpisode) -> dict[str, float]:
        """The episode return."""
        return {"return": env.total_reward}

    def close(self, env: GymEpisode) -> None:
        """Close the gymnasium environment."""
        env.env.close()

    def describe(self) -> dict[str, Any]:
        """Return the plugin's settings, with the environment id."""
        return {**super().describe(), "env_id": self.env_id}

    def _input_spec(self, input_specs: Sequence[InputSpec]) -> InputSpec:
        if self.input_name is not None:
            for spec in input_specs:
                if spec.name == self.input_name:
                    return spec
            raise ValidationError(
                f"the model has no input {self.input_name!r}; it has {[s.name for s in input_specs]}"
            )
        if len(input_specs) != 1:
            raise ValidationError(
                f"the generic gymnasium adapter feeds one input; the model has {len(input_specs)} "
                f"({[s.name for s in input_specs]})",
                hint="pass input_name=..., or write a SimulatorPlugin with its own adapter",
            )
        return input_specs[0]

    @staticmethod
    def _decode(space: Any, action: np.ndarray) -> Any:
        gymnasium = _gymnasium()
        if isinstance(space, gymnasium.spaces.Box):
            values = np.nan_to_num(np.asarray(action, dtype=space.dtype).reshape(space.shape))
            return np.clip(values, space.low, space.high)
        if isinstance(space, gymnasium.spaces.Discrete):
            values = np.asarray(action).reshape(-1)
            index = int(np.argmax(values)) if values.size == space.n else int(np.rint(values[0]))
            return int(np.clip(index, 0, space.n - 1)) + int(space.start)
        raise ValidationError(f"action space {space} is not supported by the generic adapter (Box, Discrete)")


def reacher_plugin() -> GymPlugin:
    """Reacher-v5 with the reference success: the fingertip ends within 0.02 m of the target."""
    from tools.reference.reacher import SUCCESS_DISTANCE, fingertip_distance

    return GymPlugin(
        "Reacher-v5",
        success=lambda episode: fingertip_distance(episode.env) < SUCCESS_DISTANCE,
        success_definition=(
            f"final fingertip-to-target distance < {SUCCESS_DISTANCE} m (the fingertip sphere touches the "
            "target sphere) after the 50-step episode"
        ),
    )
