"""A procedurally rendered 2D reaching task: the ground truth that gives reference policies a real task metric.

A 64x64 RGB image shows 2-4 coloured targets and the end-effector (a white cross); the instruction names one
target ("reach the red target"); proprioception is the end-effector position. An analytic controller moves
straight toward the named target with a capped step, and an action chunk is its next K deltas. Everything is
numpy and seeded: no GL, no downloads, identical on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tools.errors import ValidationError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.85, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
}
VOCABULARY: tuple[str, ...] = (
    "<pad>", "<unk>", "<bos>", "reach", "go", "move", "touch", "to", "the", "target", "one", "block",
) + tuple(COLOURS)  # fmt: skip
TOKEN_IDS: dict[str, int] = {word: index for index, word in enumerate(VOCABULARY)}
PAD_ID, UNK_ID, BOS_ID = 0, 1, 2
INSTRUCTION_TEMPLATES: tuple[str, ...] = (
    "reach the {colour} target",
    "go to the {colour} target",
    "move to the {colour} one",
    "touch the {colour} block",
)
BACKGROUND = np.array([0.12, 0.12, 0.14], dtype=np.float32)
EFFECTOR_COLOUR = np.array([1.0, 1.0, 1.0], dtype=np.float32)

Observation = dict[str, np.ndarray]
PolicyFn = Callable[[Observation], np.ndarray]


@dataclass(frozen=True)
class ReachingConfig:
    """Geometry and timing of the reaching task; the defaults are the reference task."""

    image_size: int = 64
    min_targets: int = 2
    max_targets: int = 4
    target_radius: float = 0.05
    min_separation: float = 0.22
    success_radius: float = 0.06
    max_step: float = 0.06
    horizon: int = 40
    chunk_size: int = 8
    max_instruction_tokens: int = 6
    proprio_dim: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_targets <= self.max_targets <= len(COLOURS):
            raise ValidationError(
                f"need 1 <= min_targets ({self.min_targets}) <= max_targets ({self.max_targets}) <= {len(COLOURS)}"
            )
        if self.max_step <= 0 or self.success_radius <= 0 or self.horizon <= 0 or self.chunk_size <= 0:
            raise ValidationError("max_step, success_radius, horizon and chunk_size must be positive")
        if self.proprio_dim != 2:
            raise ValidationError(
                f"proprioception is the 2D end-effector position; got proprio_dim={self.proprio_dim}"
            )


def tokenize(text: str, max_tokens: int = 6) -> np.ndarray:
    """Map an instruction to fixed word-level ids: `<bos>` then words, padded with `<pad>` to `max_tokens`."""
    words = text.lower().replace(",", " ").replace(".", " ").split()
    ids = [BOS_ID] + [TOKEN_IDS.get(word, UNK_ID) for word in words]
    if len(ids) > max_tokens:
        raise ValidationError(
            f"instruction {text!r} has {len(ids)} tokens with <bos>, more than {max_tokens}"
        )
    return np.array(ids + [PAD_ID] * (max_tokens - len(ids)), dtype=np.int64)


def controller_chunk(effector: np.ndarray, goal: np.ndarray, config: ReachingConfig) -> np.ndarray:
    """Return the analytic controller's next `chunk_size` deltas toward `goal`, shape (..., K, 2)."""
    position = np.array(effector, dtype=np.float32, copy=True)
    goal = np.asarray(goal, dtype=np.float32)
    actions = []
    for _ in range(config.chunk_size):
        delta = _cap_norm(goal - position, config.max_step)
        actions.append(delta)
        position = position + delta
    return np.stack(actions, axis=-2).astype(np.float32)


def render(
    targets: np.ndarray, colours: list[str], effector: np.ndarray, config: ReachingConfig
) -> np.ndarray:
    """Draw targets as discs and the end-effector as a cross; return a (3, H, W) float32 image in [0, 1]."""
    palette = np.array([COLOURS[name] for name in colours], dtype=np.float32)
    return render_batch(
        np.asarray(targets, np.float32)[None], palette[None], np.asarray(effector)[None], config
    )[0]


class ReachingEnv:
    """One reaching episode: `reset(seed)`, then `step(action)` until `done`; `success` says if it reached."""

    def __init__(self, config: ReachingConfig | None = None) -> None:
        self.config = config or ReachingConfig()
        self.targets = np.zeros((0, 2), dtype=np.float32)
        self.colours: list[str] = []
        self.goal_index = 0
        self.instruction = ""
        self.effector = np.zeros(2, dtype=np.float32)
        self.steps = 0
        self.success = False

    @property
    def goal(self) -> np.ndarray:
        """Position of the target named by the instruction."""
        return self.targets[self.goal_index]

    @property
    def done(self) -> bool:
        """Whether the episode is over: the goal was reached or the horizon was spent."""
        return self.success or self.steps >= self.config.horizon

    def reset(self, seed: int) -> Observation:
        """Start a new episode drawn from `seed` and return its first observation."""
        rng = np.random.default_rng(seed)
        self.targets, self.colours, self.goal_index = sample_layout(rng, self.config)
        template = INSTRUCTION_TEMPLATES[rng.integers(len(INSTRUCTION_TEMPLATES))]
        self.instruction = template.format(colour=self.colours[self.goal_index])
        self.effector = rng.uniform(0.05, 0.95, size=2).astype(np.float32)
        while np.linalg.norm(self.effector - self.goal) < 3 * self.config.success_radius:  # no free successes
            self.effector = rng.uniform(0.05, 0.95, size=2).astype(np.float32)
        self.steps = 0
        self.success = False
        return self.observation()

    def observation(self) -> Observation:
        """Return the current observation: `pixel_values` (3,H,W), `input_ids` (L,), `proprio` (P,)."""
        return {
            "pixel_values": render(self.targets, self.colours, self.effector, self.config),
            "input_ids": tokenize(self.instruction, self.config.max_instruction_tokens),
            "proprio": self.effector.copy(),
        }

    def expert_chunk(self) -> np.ndarray:
        """Return the analytic controller's action chunk from the current state, shape (K, 2)."""
        return controller_chunk(self.effector, self.goal, self.config)

    def step(self, action: np.ndarray) -> Observation:
        """Move the end-effector by `action` (capped at `max_step`, clipped to the workspace)."""
        if self.done:
            raise ValidationError("step() called on a finished episode; call reset() first")
        delta = _cap_norm(np.asarray(action, dtype=np.float32).reshape(2), self.config.max_step)
        self.effector = np.clip(self.effector + np.nan_to_num(delta), 0.0, 1.0).astype(np.float32)
        self.steps += 1
        self.success = self.success or self._reached()
        return self.observation()

    def _reached(self) -> bool:
        return float(np.linalg.norm(self.effector - self.goal)) <= self.config.success_radius


def sample_layout(rng: np.random.Generator, config: ReachingConfig) -> tuple[np.ndarray, list[str], int]:
    """Draw well separated targets with distinct colours and pick the goal; return (positions, colours, goal)."""
    count = int(rng.integers(config.min_targets, config.max_targets + 1))
    colours = [str(c) for c in rng.choice(list(COLOURS), size=count, replace=False)]
    margin = config.target_radius + 0.02
    positions: list[np.ndarray] = []
    for _ in range(10_000):
        candidate = rng.uniform(margin, 1.0 - margin, size=2).astype(np.float32)
        if all(np.linalg.norm(candidate - other) >= config.min_separation for other in positions):
            positions.append(candidate)
            if len(positions) == count:
                return np.stack(positions), colours, int(rng.integers(count))
    raise ValidationError(
        f"cannot place {count} targets {config.min_separation} apart; lower min_separation or max_targets"
    )


def make_dataset(num_samples: int, seed: int, config: ReachingConfig | None = None) -> dict[str, np.ndarray]:
    """Draw labelled samples: observations with the expert's action chunk under `actions` (N, K, 2).

    Most end-effector positions are uniform over the workspace; a third lie near the goal, where the
    final approach needs precision.
    """
    if num_samples <= 0:
        raise ValidationError(f"num_samples must be positive, got {num_samples}")
    config = config or ReachingConfig()
    rng = np.random.default_rng(seed)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    names = list(COLOURS)
    targets = np.full((num_samples, config.max_targets, 2), -10.0, dtype=np.float32)
    colour_ids = np.zeros((num_samples, config.max_targets), dtype=np.int64)
    goals = np.empty((num_samples, 2), dtype=np.float32)
    input_ids = np.empty((num_samples, config.max_instruction_tokens), dtype=np.int64)
    for index in range(num_samples):
        positions, colours, goal = sample_layout(rng, config)
        targets[index, : len(positions)] = positions
        colour_ids[index, : len(colours)] = [names.index(c) for c in colours]
        goals[index] = positions[goal]
        template = INSTRUCTION_TEMPLATES[rng.integers(len(INSTRUCTION_TEMPLATES))]
        input_ids[index] = tokenize(template.format(colour=colours[goal]), config.max_instruction_tokens)
    near_goal = rng.random(num_samples) < 1 / 3
    effector = np.where(
        near_goal[:, None],
        goals + rng.normal(0.0, 0.08, size=(num_samples, 2)),
        rng.uniform(0, 1, (num_samples, 2)),
    )
    effector = np.clip(effector, 0.0, 1.0).astype(np.float32)
    pixels = np.empty((num_samples, 3, config.image_size, config.image_size), dtype=np.float32)
    for start in range(0, num_samples, 256):
        block = slice(start, start + 256)
        pixels[block] = render_batch(targets[block], palette[colour_ids[block]], effector[block], config)
    actions = controller_chunk(effector, goals, config)
    return {"pixel_values": pixels, "input_ids": input_ids, "proprio": effector, "actions": actions}


def render_batch(
    targets: np.ndarray, colours: np.ndarray, effector: np.ndarray, config: ReachingConfig
) -> np.ndarray:
    """Render many scenes at once: targets (N, M, 2) (off-image ones are skipped), colours (N, M, 3)."""
    size = config.image_size
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    dx = centres[None, None, None, :] - targets[:, :, 0, None, None]
    dy = centres[None, None, :, None] - targets[:, :, 1, None, None]
    inside = dx**2 + dy**2 <= config.target_radius**2  # (N, M, H, W)
    image = np.broadcast_to(BACKGROUND[None, :, None, None], (len(targets), 3, size, size)).copy()
    for slot in range(targets.shape[1]):
        mask = inside[:, slot][:, None]
        image = np.where(mask, colours[:, slot, :, None, None], image)
    col, row = (np.clip(effector, 0.0, 1.0 - 1e-6) * size).astype(int).T
    arm = max(1, size // 32)
    rows = np.arange(len(targets))
    for offset in range(-arm, arm + 1):
        image[rows, :, row, np.clip(col + offset, 0, size - 1)] = EFFECTOR_COLOUR
        image[rows, :, np.clip(row + offset, 0, size - 1), col] = EFFECTOR_COLOUR
    return image.astype(np.float32)


@dataclass(frozen=True)
class RolloutResult:
    """Closed-loop success over fixed-seed episodes, with a 95% Wilson score interval."""

    success_rate: float
    ci_low: float
    ci_high: float
    episodes: int
    successes: int
    mean_steps: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the result as plain JSON-ready values."""
        return {
            "success_rate": self.success_rate,
            "ci95": [self.ci_low, self.ci_high],
            "episodes": self.episodes,
            "successes": self.successes,
            "mean_steps": self.mean_steps,
        }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial proportion (95% by default)."""
    if trials <= 0:
        raise ValidationError(f"trials must be positive, got {trials}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rollout_success(
    policy_fn: PolicyFn,
    episodes: int = 50,
    seed: int = 1000,
    actions_per_chunk: int = 4,
    config: ReachingConfig | None = None,
) -> RolloutResult:
    """Run `episodes` closed-loop episodes (seeds `seed`, `seed+1`, ...) and return the success rate.

    Episodes run in lockstep: `policy_fn` gets a batched observation (every array with a leading episode
    axis) and returns action chunks (B, K, 2); the first `actions_per_chunk` actions are executed, then it
    re-plans.
    """
    if episodes <= 0 or actions_per_chunk <= 0:
        raise ValidationError(
            f"episodes and actions_per_chunk must be positive, got {episodes}, {actions_per_chunk}"
        )
    envs = [ReachingEnv(config) for _ in range(episodes)]
    observations = [env.reset(seed + index) for index, env in enumerate(envs)]
    while True:
        active = [index for index, env in enumerate(envs) if not env.done]
        if not active:
            break
        batch = {key: np.stack([observations[i][key] for i in active]) for key in observations[0]}
        chunks = np.asarray(policy_fn(batch), dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != len(active) or chunks.shape[2] != 2:
            raise ValidationError(f"policy returned shape {chunks.shape}, expected ({len(active)}, K, 2)")
        for row, index in enumerate(active):
            for action in chunks[row, :actions_per_chunk]:
                if envs[index].done:
                    break
                observations[index] = envs[index].step(action)
    successes = sum(env.success for env in envs)
    low, high = wilson_interval(successes, episodes)
    return RolloutResult(
        success_rate=successes / episodes,
        ci_low=low,
        ci_high=high,
        episodes=episodes,
        successes=successes,
        mean_steps=float(np.mean([env.steps for env in envs])),
    )


def random_policy(seed: int = 0, chunk_size: int = 8, max_step: float = 0.06) -> PolicyFn:
    """Return a policy drawing uniform random deltas of at most `max_step`: the chance baseline."""
    rng = np.random.default_rng(seed)

    def act(observation: Observation) -> np.ndarray:
        batch = observation["proprio"].shape[0]
        return rng.uniform(-max_step, max_step, size=(batch, chunk_size, 2)).astype(np.float32)

    return act


def _cap_norm(vectors: np.ndarray, limit: float) -> np.ndarray:
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    scale = np.minimum(1.0, limit / np.maximum(norm, 1e-12))
    return (vectors * scale).astype(np.float32)
