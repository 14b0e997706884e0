"""The Reacher-v5 reference: the scripted expert reaches, the behaviour clone is far above chance in MuJoCo,
training is seeded, the build is cached, and every export loads like the other references and matches."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from tools.errors import ValidationError
from tools.inputs import InputSpec
from tools.intake import LoadOptions, load_model
from tools.reference.build import read_reference_metadata
from tools.reference.reacher import (
    ReacherPolicy,
    ReacherTraining,
    build_reference_reacher,
    collect_demonstrations,
    expert_rollout,
    random_reacher_policy,
    rollout_reacher,
    train_reacher_policy,
)
from tools.techniques.artifacts import run_outputs

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reacher_dir(reference_cache: Path) -> Path:
    return build_reference_reacher(reference_cache)


def test_clone_succeeds_far_above_chance_and_near_the_expert(reacher_dir: Path) -> None:
    metadata = read_reference_metadata(reacher_dir)
    metrics = metadata["metrics"]
    clone, chance, expert = metrics["closed_loop"], metrics["random_policy"], metrics["expert"]
    assert clone["episodes"] == chance["episodes"] == 100 and clone["seed"] == chance["seed"]
    assert clone["success_rate"] >= 0.8 and chance["success_rate"] <= 0.1  # measured 0.99 vs 0.01
    assert clone["ci95"][0] > chance["ci95"][1]  # the 95% intervals are far apart
    assert expert["success_rate"] >= 0.95
    assert metadata["training"]["final_loss"] < 0.2 * metadata["training"]["first_loss"]
    assert metadata["parameters"] < 10_000 and metadata["build_seconds"] > 0


def test_expert_reaches_and_chance_does_not() -> None:
    assert expert_rollout(episodes=20, seed=3).success_rate == 1.0
    assert rollout_reacher(random_reacher_policy(0), episodes=20, seed=3).success_rate <= 0.15


def test_every_export_loads_and_matches(reacher_dir: Path, tmp_path: Path) -> None:
    metadata = read_reference_metadata(reacher_dir)
    formats = metadata["formats"]
    assert set(formats) >= {"torch_state_dict", "safetensors", "torchscript", "torch_pickled_module", "onnx"}
    state_dict = load_model(
        reacher_dir / formats["torch_state_dict"],
        LoadOptions(architecture=metadata["architecture"], config_path=reacher_dir / metadata["config_file"]),
        tmp_path,
    )
    assert state_dict.input_specs == [InputSpec(name="observation", shape=(1, 10))]
    observations = {"observation": torch.randn(5, 10, generator=torch.Generator().manual_seed(0))}
    expected = run_outputs(state_dict, observations)[0]
    assert expected.shape == (5, 2)
    for name in ("torchscript", "onnx", "torch_pickled_module"):
        options = LoadOptions(trust_pickle=True) if name == "torch_pickled_module" else LoadOptions()
        other = load_model(reacher_dir / formats[name], options, tmp_path)
        torch.testing.assert_close(run_outputs(other, observations)[0], expected, rtol=1e-4, atol=1e-5)


def test_cached_build_is_reused(reacher_dir: Path, reference_cache: Path) -> None:
    stamp = (reacher_dir / "reference.json").stat().st_mtime_ns
    assert build_reference_reacher(reference_cache) == reacher_dir
    assert (reacher_dir / "reference.json").stat().st_mtime_ns == stamp


def test_training_is_seeded() -> None:
    small = ReacherTraining(episodes=10, steps=100, batch_size=64)
    first, report = train_reacher_policy(small)
    second, _ = train_reacher_policy(small)
    assert report["samples"] == 10 * 50
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other, _ = train_reacher_policy(ReacherTraining(episodes=10, steps=100, batch_size=64, seed=1))
    assert not torch.equal(first.mlp[0].weight, other.mlp[0].weight)
    assert isinstance(first, ReacherPolicy) and not first.training


def test_refuses_bad_requests() -> None:
    with pytest.raises(ValidationError):
        collect_demonstrations(episodes=0, seed=0, action_noise=0.1)
    with pytest.raises(ValidationError, match="shape"):
        rollout_reacher(lambda observations: np.zeros((len(observations), 3)), episodes=2)
    with pytest.raises(ValidationError):
        rollout_reacher(random_reacher_policy(), episodes=0)
