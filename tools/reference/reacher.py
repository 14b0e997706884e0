"""A behaviour-cloned MLP policy for gymnasium's MuJoCo Reacher-v5: a reference with a real physics simulator.

A scripted expert (analytic inverse kinematics of the 2-link arm, then a joint-space PD law on MuJoCo's
`qpos`/`qvel`) reaches the target in every episode. Demonstrations are collected with noise injected into the
executed actions while the clean expert action is the label (DART), so the clone also learns to recover from
its own drift; a small MLP (`observation` 10 -> 64 -> 64 -> 2 `actions`) is then fitted by MSE.

Success is the fingertip ending within `SUCCESS_DISTANCE` (0.02 m) of the target after the episode's 50
steps: the fingertip sphere (radius 0.01 m) then overlaps the target sphere (radius 0.009 m). It is stricter
than gymnasium's return threshold (-3.75 over 50 steps), which also counts the approach and a random policy
can pass when the target happens to spawn near the arm.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tools.errors import MissingDependencyError, ValidationError
from tools.inputs import InputSpec
from tools.log import get_logger
from tools.reference.build import cached_build, source_fingerprint
from tools.reference.exports import export_model
from tools.reference.reaching import RolloutResult, wilson_interval
from tools.reference.reproducible import reproducible_kernels
from tools.reference.shipped import shipped_entry, ships, weights_for
from tools.reference.training import deterministic

logger = get_logger("reference")

ENV_ID = "Reacher-v5"
LINK_LENGTHS = (0.1, 0.11)  # shoulder-elbow and elbow-fingertip, from gymnasium's reacher.xml
ELBOW_LIMIT = 2.9  # joint1's range is +-3.0 rad; stay inside it
SUCCESS_DISTANCE = 0.02
OBSERVATION_SIZE = 10
ACTION_SIZE = 2
EVAL_EPISODES = 100
EVAL_SEED = 10_000
DEMO_SEED = 1_000_000  # demonstration episodes never share a seed with evaluation episodes

ReacherPolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExpertGains:
    """Joint-space PD gains of the scripted expert (control units per radian and per radian/second)."""

    kp: float = 1.0
    kd: float = 0.1


@dataclass(frozen=True)
class ReacherTraining:
    """Demonstrations and behaviour-cloning schedule of the reference Reacher policy."""

    episodes: int = 200
    action_noise: float = 0.3
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 0
    threads: int = 1  # a 10-64-64-2 MLP gains nothing from threads; on shared cores they only spin

    def as_dict(self) -> dict[str, float | int]:
        """Return the schedule as plain JSON-ready values."""
        return asdict(self)


class ReacherPolicyConfig(BaseModel):
    """Shape of the Reacher policy MLP; the defaults build the reference (about 5k parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observation_size: int = Field(default=OBSERVATION_SIZE, ge=1, description="Observation features.")
    hidden_sizes: tuple[int, ...] = Field(default=(64, 64), min_length=1, description="Hidden layer widths.")
    action_size: int = Field(default=ACTION_SIZE, ge=1, description="Action dimensions (joint torques).")


class ReacherPolicy(nn.Module):
    """MLP policy: raw Reacher observation (B, 10) -> joint controls (B, 2); normalization is built in."""

    def __init__(self, config: ReacherPolicyConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = ReacherPolicyConfig.model_validate({**(config.model_dump() if config else {}), **overrides})
        self.config = cfg
        layers: list[nn.Module] = []
        width = cfg.observation_size
        for hidden in cfg.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, cfg.action_size))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("observation_mean", torch.zeros(cfg.observation_size))
        self.register_buffer("observation_std", torch.ones(cfg.observation_size))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Map observations to controls; the environment clips them to [-1, 1]."""
        return self.mlp((observation - self.observation_mean) / self.observation_std)

    @staticmethod
    def input_specs(config: ReacherPolicyConfig | dict[str, Any] | None = None) -> list[InputSpec]:
        """Return the batch-1 input specification: the flat Reacher observation."""
        cfg = (
            ReacherPolicyConfig.model_validate(config)
            if isinstance(config, dict)
            else (config or ReacherPolicyConfig())
        )
        return [InputSpec(name="observation", shape=(1, cfg.observation_size), dtype="float32")]

    @staticmethod
    def output_names() -> list[str]:
        """Name of the single output: the controls."""
        return ["actions"]


def make_reacher_env() -> Any:
    """Create a gymnasium Reacher-v5 environment (50-step time limit), or say what to install."""
    try:
        import gymnasium
    except ImportError:
        raise MissingDependencyError(
            "the Reacher reference needs gymnasium with MuJoCo", hint="pip install 'gymnasium[mujoco]'"
        ) from None
    try:
        return gymnasium.make(ENV_ID)
    except (ImportError, gymnasium.error.DependencyNotInstalled) as exc:
        raise MissingDependencyError(
            f"gymnasium cannot create {ENV_ID}: {exc}", hint="pip install 'gymnasium[mujoco]'"
        ) from None


def expert_action(data: Any, gains: ExpertGains = ExpertGains()) -> np.ndarray:
    """Return the scripted expert's controls from MuJoCo `data` (qpos: 2 joints then the target x, y)."""
    joints, velocities, goal = data.qpos[:2], data.qvel[:2], data.qpos[2:4]
    first, second = LINK_LENGTHS
    cos_elbow = (float(goal @ goal) - first**2 - second**2) / (2 * first * second)
    elbow = min(float(np.arccos(np.clip(cos_elbow, -1.0, 1.0))), ELBOW_LIMIT)  # one elbow branch: continuous
    shoulder = np.arctan2(goal[1], goal[0]) - np.arctan2(
        second * np.sin(elbow), first + second * np.cos(elbow)
    )
    error = np.array([shoulder - joints[0], elbow - joints[1]])
    error[0] = (error[0] + np.pi) % (2 * np.pi) - np.pi  # the shoulder turns freely: take the short way
    return np.clip(gains.kp * error - gains.kd * velocities, -1.0, 1.0).astype(np.float32)


def fingertip_distance(env: Any) -> float:
    """Return the planar distance in metres between the fingertip and the target of a Reacher env."""
    base = env.unwrapped
    return float(np.linalg.norm((base.get_body_com("fingertip") - base.get_body_com("target"))[:2]))


def rollout_reacher(
    policy_fn: ReacherPolicyFn, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED
) -> RolloutResult:
    """Run `episodes` Reacher episodes (seeds `seed`, `seed+1`, ...) in lockstep and return the success rate.

    `policy_fn` maps a batch of observations (B, 10) to controls (B, 2), clipped to [-1, 1] before stepping.
    """
    return _lockstep_rollout(lambda observations, envs: policy_fn(observations), episodes, seed)


def expert_rollout(episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED) -> RolloutResult:
    """Closed-loop success of the scripted expert, which reads the simulator state (the upper bound)."""
    return _lockstep_rollout(
        lambda observations, envs: np.stack([expert_action(env.unwrapped.data) for env in envs]),
        episodes,
        seed,
    )


def _lockstep_rollout(
    act: Callable[[np.ndarray, list[Any]], np.ndarray], episodes: int, seed: int
) -> RolloutResult:
    if episodes <= 0:
        raise ValidationError(f"episodes must be positive, got {episodes}")
    envs = [make_reacher_env() for _ in range(episodes)]
    try:
        observations = np.stack([env.reset(seed=seed + index)[0] for index, env in enumerate(envs)])
        done = np.zeros(episodes, dtype=bool)
        steps = np.zeros(episodes, dtype=int)
        while not done.all():
            active = np.flatnonzero(~done)
            actions = act(observations[active].astype(np.float32), [envs[i] for i in active])
            actions = np.asarray(actions, dtype=np.float32)
            if actions.shape != (len(active), ACTION_SIZE):
                raise ValidationError(f"policy returned shape {actions.shape}, expected ({len(active)}, 2)")
            for row, index in enumerate(active):
                observation, _, terminated, truncated, _ = envs[index].step(np.clip(actions[row], -1.0, 1.0))
                observations[index] = observation
                steps[index] += 1
                done[index] = terminated or truncated
        successes = int(sum(fingertip_distance(env) < SUCCESS_DISTANCE for env in envs))
    finally:
        for env in envs:
            env.close()
    low, high = wilson_interval(successes, episodes)
    return RolloutResult(successes / episodes, low, high, episodes, successes, float(steps.mean()))


def collect_demonstrations(
    episodes: int, seed: int, action_noise: float, gains: ExpertGains = ExpertGains()
) -> tuple[np.ndarray, np.ndarray]:
    """Roll out the expert with per-episode Gaussian action noise; return (observations, clean labels)."""
    if episodes <= 0 or action_noise < 0:
        raise ValidationError(f"need episodes > 0 and action_noise >= 0, got {episodes}, {action_noise}")
    rng = np.random.default_rng(seed)
    env = make_reacher_env()
    observations, labels = [], []
    for episode in range(episodes):
        observation, _ = env.reset(seed=DEMO_SEED + seed * 100_000 + episode)
        sigma = action_noise * rng.uniform()
        done = False
        while not done:
            action = expert_action(env.unwrapped.data, gains)
            observations.append(observation)
            labels.append(action)
            executed = np.clip(action + rng.normal(0.0, sigma, ACTION_SIZE), -1.0, 1.0)
            observation, _, terminated, truncated, _ = env.step(executed)
            done = terminated or truncated
    env.close()
    return np.asarray(observations, dtype=np.float32), np.asarray(labels, dtype=np.float32)


def train_reacher_policy(training: ReacherTraining) -> tuple[ReacherPolicy, dict[str, float]]:
    """Collect demonstrations and fit a ReacherPolicy by behaviour cloning (seeded: reruns are identical)."""
    with deterministic(training.seed, training.threads):
        return _train(training)


def _train(training: ReacherTraining) -> tuple[ReacherPolicy, dict[str, float]]:
    started = time.perf_counter()
    observations, labels = collect_demonstrations(training.episodes, training.seed, training.action_noise)
    collection_seconds = time.perf_counter() - started
    model = ReacherPolicy()
    with torch.no_grad():
        model.observation_mean.copy_(torch.from_numpy(observations.mean(axis=0)))
        model.observation_std.copy_(torch.from_numpy(observations.std(axis=0) + 1e-6))
    inputs, targets = torch.from_numpy(observations), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    generator = torch.Generator().manual_seed(training.seed)
    losses = []
    started = time.perf_counter()
    model.train()
    for step in range(training.steps):
        for group in optimizer.param_groups:
            group["lr"] = training.learning_rate * 0.5 * (1.0 + np.cos(np.pi * step / training.steps))
        batch = torch.randint(0, len(inputs), (training.batch_size,), generator=generator)
        loss = (model(inputs[batch]) - targets[batch]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    window = max(1, min(50, training.steps // 10))
    logger.info(
        "reacher behaviour cloning: loss %.4f -> %.4f on %d samples",
        float(np.mean(losses[:window])),
        float(np.mean(losses[-window:])),
        len(inputs),
    )
    return model, {
        "samples": int(len(inputs)),
        "first_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        "collection_seconds": round(collection_seconds, 2),
        "training_seconds": round(time.perf_counter() - started, 2),
    }


def torch_reacher_policy(model: nn.Module) -> ReacherPolicyFn:
    """Wrap a torch Reacher policy as a batched `policy_fn(observations) -> controls`."""

    @torch.no_grad()
    def act(observations: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(observations, dtype=np.float32))).numpy()

    model.eval()
    return act


def random_reacher_policy(seed: int = 0) -> ReacherPolicyFn:
    """Return a policy drawing uniform random controls in [-1, 1]: the chance baseline."""
    rng = np.random.default_rng(seed)
    return lambda observations: rng.uniform(-1.0, 1.0, size=(len(observations), ACTION_SIZE)).astype(
        np.float32
    )


def _build_reacher(target: Path, training: ReacherTraining) -> dict[str, Any]:
    """Load the shipped Reacher clone (or train it, for a seed that does not ship), measure it against the
    expert and chance, and export every format."""
    import gymnasium
    import mujoco

    model = ReacherPolicy()

    def train() -> dict[str, Any]:
        trained, report = train_reacher_policy(training)
        model.load_state_dict(trained.state_dict())
        return {**training.as_dict(), **report}

    with reproducible_kernels():
        provenance = weights_for("reacher", training.seed, model, train)
    report = provenance["training"]
    with deterministic(training.seed, training.threads):
        started = time.perf_counter()
        trained = rollout_reacher(torch_reacher_policy(model), EVAL_EPISODES, EVAL_SEED)
        chance = rollout_reacher(random_reacher_policy(training.seed), EVAL_EPISODES, EVAL_SEED)
        expert = expert_rollout(EVAL_EPISODES, EVAL_SEED)
        evaluation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    config = model.config.model_dump(mode="json")
    exported = export_model(
        model,
        target,
        f"{ReacherPolicy.__module__}:{ReacherPolicy.__qualname__}",
        config,
        ReacherPolicy.input_specs(model.config),
        ReacherPolicy.output_names(),
    )
    evaluation = {"seed": EVAL_SEED, "success_distance_m": SUCCESS_DISTANCE, "env_id": ENV_ID}
    return {
        "architecture": exported.architecture,
        "config": config,
        "config_file": exported.config_path.name,
        "formats": {name: path.name for name, path in exported.formats.items()},
        "input_specs": [spec.model_dump(mode="json") for spec in exported.input_specs],
        "output_names": exported.output_names,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "task": {
            "env_id": ENV_ID,
            "success_distance_m": SUCCESS_DISTANCE,
            "expert_gains": asdict(ExpertGains()),
        },
        "training": report,
        "weights": {key: value for key, value in provenance.items() if key != "training"},
        "weights_sha256": provenance["weights_sha256"],
        "metrics": {
            "closed_loop": {**trained.as_dict(), **evaluation},
            "random_policy": {**chance.as_dict(), **evaluation},
            "expert": {**expert.as_dict(), **evaluation},
        },
        "timings": {
            "training_seconds": report["training_seconds"] if provenance["source"] == "trained" else 0.0,
            "collection_seconds": report["collection_seconds"] if provenance["source"] == "trained" else 0.0,
            "evaluation_seconds": round(evaluation_seconds, 2),
            "export_seconds": round(time.perf_counter() - started, 2),
        },
        "torch_version": torch.__version__,
        "gymnasium_version": gymnasium.__version__,
        "mujoco_version": mujoco.__version__,
    }


def build_reference_reacher(cache_dir: Path, seed: int = 0) -> Path:
    """Build (or find cached) the behaviour-cloned Reacher-v5 policy with its metrics and every export."""
    try:
        import gymnasium
        import mujoco
    except ImportError:
        raise MissingDependencyError(
            "the Reacher reference needs gymnasium with MuJoCo", hint="pip install 'gymnasium[mujoco]'"
        ) from None
    training = ReacherTraining(seed=seed)
    fingerprint = source_fingerprint(
        (
            "reacher.py",
            "reaching.py",
            "training.py",
            "exports.py",
            "build.py",
            "reproducible.py",
            "shipped.py",
        ),
        (
            repr(training),
            f"gymnasium={gymnasium.__version__}",
            f"mujoco={mujoco.__version__}",
            f"shipped={shipped_entry('reacher', seed)['sha256'] if ships('reacher', seed) else 'none'}",
        ),
    )
    return cached_build(
        cache_dir,
        "reacher",
        seed,
        fingerprint,
        lambda target: _build_reacher(target, training),
        reproducible=not ships("reacher", seed),
    )
