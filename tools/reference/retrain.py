"""Retrain a shipped reference from its recipe and judge the result by behaviour, never by bytes.

`retrain(name)` trains in a child process on the pinned kernels of `tools.reference.reproducible`;
`probe_behaviour` measures a policy on fixed, seeded probes (closed-loop success on the reference's evaluation
episodes, action error against the expert on held-out observations); `compare_with_shipped` sets a retrain
beside the shipped weights with `tools.reference.shipped.compare_behaviour`. `python -m tools.reference --train
NAME` and `--record` are the command-line faces of these.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tools.errors import NotFoundError
from tools.reference.build import (
    EVAL_ACTIONS_PER_CHUNK,
    EVAL_EPISODES,
    EVAL_SEED,
    HELDOUT_SEED,
    load_reference_module,
    read_reference_metadata,
)
from tools.reference.reproducible import TRAINED_REFERENCES, build_in_child, weights_digest
from tools.reference.shipped import (
    TRAIN_FLAG,
    Behaviour,
    BehaviourComparison,
    compare_behaviour,
    load_shipped_weights,
)

PROBE_SAMPLES = 512  # held-out observations for the action error (reaching task)
PROBE_DEMONSTRATIONS = 10  # clean expert episodes of 50 steps for the action error (Reacher)
PROBE_DEMONSTRATION_SEED = 7  # demonstration seeds 1_700_000+: never the training ones (seed 0: 1_000_000+)


def retrain(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """Train reference `name` from its recipe into `cache_dir` on pinned kernels; return the built directory."""
    _check_trained(name)
    return build_in_child(name, Path(cache_dir), seed, extra_env={TRAIN_FLAG: "1"})


def shipped_module(name: str, like: Path, seed: int = 0) -> nn.Module:
    """Build the module of reference `name` (architecture and config of the built directory `like`) with the
    shipped weights."""
    _check_trained(name)
    metadata = read_reference_metadata(like)
    module_name, _, class_name = metadata["architecture"].partition(":")
    model = getattr(importlib.import_module(module_name), class_name)(**metadata["config"])
    model.load_state_dict(load_shipped_weights(name, seed))
    return model.eval()


@torch.no_grad()
def probe_behaviour(name: str, model: nn.Module, episodes: int = EVAL_EPISODES) -> Behaviour:
    """Measure `model` as reference `name`: closed-loop success on the seeded evaluation episodes, and its
    action error against the expert on held-out observations (one thread, so the figures repeat)."""
    _check_trained(name)
    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if name == "reacher":
            return _probe_reacher(model, episodes)
        return _probe_reaching(name, model, episodes)
    finally:
        torch.set_num_threads(previous)


def _probe_reaching(name: str, model: nn.Module, episodes: int) -> Behaviour:
    from tools.reference.conv_policy import POLICY_INPUTS as CONV_INPUTS
    from tools.reference.conv_policy import SINGLE_TARGET_TASK
    from tools.reference.reaching import ReachingConfig, make_dataset, rollout_success
    from tools.reference.training import POLICY_INPUTS, to_tensors, torch_policy

    task, inputs = (
        (SINGLE_TARGET_TASK, CONV_INPUTS) if name == "conv_policy" else (ReachingConfig(), POLICY_INPUTS)
    )
    result = rollout_success(
        torch_policy(model, inputs),
        episodes=episodes,
        seed=EVAL_SEED,
        actions_per_chunk=EVAL_ACTIONS_PER_CHUNK,
        config=task,
    )
    data = to_tensors(make_dataset(PROBE_SAMPLES, HELDOUT_SEED, task))
    actions = model(**{key: data[key] for key in inputs})
    mse = float((actions - data["actions"]).pow(2).mean())
    return Behaviour(result.success_rate, episodes, mse, actions.numpy())


def _probe_reacher(model: nn.Module, episodes: int) -> Behaviour:
    from tools.reference.reacher import collect_demonstrations, rollout_reacher, torch_reacher_policy

    result = rollout_reacher(torch_reacher_policy(model), episodes, EVAL_SEED)
    observations, labels = collect_demonstrations(PROBE_DEMONSTRATIONS, PROBE_DEMONSTRATION_SEED, 0.0)
    actions = model(torch.from_numpy(observations)).numpy()
    mse = float(np.mean((actions - labels) ** 2))
    return Behaviour(result.success_rate, episodes, mse, actions)


def compare_with_shipped(
    name: str, retrained: nn.Module, like: Path, seed: int = 0, episodes: int = EVAL_EPISODES
) -> BehaviourComparison:
    """Judge a retrained `name` against the shipped weights on the same probes: within the bands or not."""
    shipped = shipped_module(name, like, seed)
    return compare_behaviour(
        name,
        probe_behaviour(name, shipped, episodes),
        probe_behaviour(name, retrained, episodes),
        bytes_identical=weights_digest(shipped) == weights_digest(retrained),
    )


def retrain_and_compare(name: str, cache_dir: Path, seed: int = 0) -> tuple[Path, BehaviourComparison]:
    """Retrain `name` from its recipe and compare it with the shipped weights (`--train NAME`)."""
    directory = retrain(name, cache_dir, seed)
    return directory, compare_with_shipped(name, load_reference_module(directory), directory, seed)


def _check_trained(name: str) -> None:
    if name not in TRAINED_REFERENCES:
        raise NotFoundError(
            f"{name!r} is not a trained reference; trained ones: {', '.join(TRAINED_REFERENCES)}",
            hint="the hf_* references are random-weight directories built on the fly",
        )
