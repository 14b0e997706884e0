"""Behaviour cloning on the reaching task: deterministic training, action error, and policy adapters."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from tools.errors import ValidationError
from tools.log import get_logger
from tools.reference.reaching import Observation, PolicyFn, ReachingConfig, make_dataset

logger = get_logger("reference")
POLICY_INPUTS = ("pixel_values", "input_ids", "proprio")


@dataclass(frozen=True)
class TrainingConfig:
    """Behaviour-cloning schedule: AdamW with linear warm-up and cosine decay, fresh samples every step."""

    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2

    def as_dict(self) -> dict[str, float | int]:
        """Return the schedule as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingReport:
    """What a training run did: wall time, samples seen, and the loss at the start and at the end."""

    seconds: float
    samples: int
    first_loss: float
    final_loss: float


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed python, numpy and torch and fix torch's thread count for the duration of the block."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert a numpy batch to tensors sharing memory."""
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}


def train_behaviour_cloning(
    model: nn.Module,
    config: TrainingConfig,
    task: ReachingConfig | None = None,
    inputs: tuple[str, ...] = POLICY_INPUTS,
) -> TrainingReport:
    """Fit `model(**inputs) -> actions` to the analytic controller's chunks with an MSE in step units."""
    if config.steps <= 0 or config.batch_size <= 0:
        raise ValidationError(
            f"steps and batch_size must be positive, got {config.steps}, {config.batch_size}"
        )
    task = task or ReachingConfig()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    start = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(config.steps):
        warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = (
                config.learning_rate * warmup * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
            )
        batch = to_tensors(make_dataset(config.batch_size, seed=config.seed * 1_000_003 + step, config=task))
        prediction = model(**{name: batch[name] for name in inputs})
        loss = ((prediction - batch["actions"]) / task.max_step).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == config.steps - 1:
            logger.info(
                "behaviour cloning step %d/%d loss %.4f",
                step + 1,
                config.steps,
                losses[-1],
                extra={"step": step},
            )
    model.eval()
    window = max(1, min(20, config.steps // 10))
    return TrainingReport(
        seconds=time.perf_counter() - start,
        samples=config.steps * config.batch_size,
        first_loss=float(np.mean(losses[:window])),
        final_loss=float(np.mean(losses[-window:])),
    )


@torch.no_grad()
def action_errors(
    model: nn.Module, dataset: dict[str, np.ndarray], inputs: tuple[str, ...] = POLICY_INPUTS
) -> dict[str, float]:
    """Return the model's action MSE on `dataset` next to the zero-action and mean-action baselines."""
    model.eval()
    tensors = to_tensors(dataset)
    predictions = torch.cat(
        [
            model(**{name: tensors[name][i : i + 256] for name in inputs})
            for i in range(0, len(tensors["actions"]), 256)
        ]
    )
    actions = tensors["actions"]
    return {
        "action_mse": float((predictions - actions).pow(2).mean()),
        "zero_action_mse": float(actions.pow(2).mean()),
        "mean_action_mse": float((actions - actions.mean(dim=0)).pow(2).mean()),
        "samples": int(len(actions)),
    }


def torch_policy(model: nn.Module, inputs: tuple[str, ...] = POLICY_INPUTS) -> PolicyFn:
    """Wrap a torch module as a batched `policy_fn(observation) -> action chunks` for `rollout_success`."""

    @torch.no_grad()
    def act(observation: Observation) -> np.ndarray:
        tensors = to_tensors({name: observation[name] for name in inputs})
        return model(**tensors).numpy()

    model.eval()
    return act
