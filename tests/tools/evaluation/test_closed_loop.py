"""Closed-loop success in simulators: the reference VLA solves the reaching task and a broken copy does not,
the behaviour-cloned Reacher policy beats an untrained one in MuJoCo, both are measured on the very same
episodes, torch and ONNX Runtime agree, and any gymnasium environment can be plugged in by id."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from tools.errors import NotFoundError, ValidationError
from tools.evaluation.closed_loop import evaluate_closed_loop
from tools.evaluation.simulators import GymPlugin, ReachingPlugin, get_simulator, list_simulators
from tools.evaluation.types import AccuracyResult
from tools.inputs import InputSpec
from tools.intake import LoadedModel, LoadOptions, load_model
from tools.reference import reference_model_file
from tools.reference.build import read_reference_metadata
from tools.reference.reacher import ReacherPolicy, build_reference_reacher
from tools.reference.reaching import rollout_success
from tools.reference.training import torch_policy
from tools.techniques.artifacts import save_torch_module

pytestmark = pytest.mark.integration

EVAL_SEED = 10_000  # the seed the reference builds measured themselves with


def _initial_states(result: AccuracyResult) -> list[tuple[int, str]]:
    return [(episode["seed"], episode["initial_state"]) for episode in result.details["episodes"]]


def _saved(module: nn.Module, specs: list[InputSpec], directory: Path) -> LoadedModel:
    directory.mkdir(parents=True, exist_ok=True)
    path, _, options = save_torch_module(module.eval(), directory, specs)
    return load_model(path, options, directory / "data")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Batched rollouts of small models gain nothing from threads on a shared machine; they only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vla(reference_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path, options = reference_model_file("vla", reference_cache)
    return load_model(path, options, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reacher_dir(reference_cache: Path) -> Path:
    return build_reference_reacher(reference_cache)


@pytest.fixture(scope="module")
def reacher(reacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    metadata = read_reference_metadata(reacher_dir)
    options = LoadOptions(
        architecture=metadata["architecture"], config_path=reacher_dir / metadata["config_file"]
    )
    return load_model(
        reacher_dir / metadata["formats"]["torch_state_dict"], options, tmp_path_factory.mktemp("d")
    )


def test_reference_vla_succeeds_and_a_broken_copy_fails_on_the_same_episodes(vla: LoadedModel) -> None:
    result = evaluate_closed_loop(vla, "reaching", episodes=100, seed=EVAL_SEED)
    assert result.level == "closed_loop" and result.metric == "success_rate" and result.higher_is_better
    assert result.value >= 0.9 and result.samples == 100  # measured 0.99 [0.95, 1.00]
    assert result.ci_low <= result.value <= result.ci_high and result.ci_low > 0.85
    same = rollout_success(torch_policy(vla.module), episodes=100, seed=EVAL_SEED)
    assert result.details["successes"] == same.successes  # the reference build's own measure agrees
    broken_module = copy.deepcopy(vla.module)
    with torch.no_grad():
        broken_module.action_head.mlp[-1].weight.zero_()  # the action head ignores its input
    broken = evaluate_closed_loop(dataclasses.replace(vla, module=broken_module), "reaching", 100, EVAL_SEED)
    assert broken.value <= 0.2 and broken.ci_high < result.ci_low  # measured 0.00
    assert _initial_states(broken) == _initial_states(result)
    assert len({state for _, state in _initial_states(result)}) == 100  # and the episodes do differ
    assert AccuracyResult.model_validate_json(result.model_dump_json()) == result


def test_onnx_runtime_drives_the_same_episodes_as_torch(
    vla: LoadedModel, built_vla: Path, tmp_path: Path
) -> None:
    onnx_file = built_vla / read_reference_metadata(built_vla)["formats"]["onnx"]
    onnx = load_model(onnx_file, LoadOptions(), tmp_path)
    from_torch = evaluate_closed_loop(vla, ReachingPlugin(), episodes=30, seed=7, batch_size=16)
    from_onnx = evaluate_closed_loop(onnx, ReachingPlugin(), episodes=30, seed=7)
    assert _initial_states(from_torch) == _initial_states(from_onnx)
    assert abs(from_torch.details["successes"] - from_onnx.details["successes"]) <= 1
    assert from_torch.details["model_calls"] > from_onnx.details["model_calls"]  # batches of 16 vs all


def test_reacher_clone_beats_an_untrained_policy_in_mujoco(
    reacher: LoadedModel, reacher_dir: Path, tmp_path: Path
) -> None:
    trained = evaluate_closed_loop(reacher, "gym:Reacher-v5", episodes=100, seed=EVAL_SEED)
    torch.manual_seed(0)
    untrained_model = _saved(ReacherPolicy(), ReacherPolicy.input_specs(), tmp_path)
    untrained = evaluate_closed_loop(untrained_model, "gym:Reacher-v5", episodes=100, seed=EVAL_SEED)
    assert trained.value >= 0.8 and untrained.value <= 0.1  # measured 0.99 [0.95, 1.00] vs 0.01
    assert trained.ci_low > untrained.ci_high
    assert _initial_states(trained) == _initial_states(untrained)
    metrics = read_reference_metadata(reacher_dir)["metrics"]
    assert trained.details["successes"] == metrics["closed_loop"]["successes"]  # same episodes as the build
    assert metrics["random_policy"]["success_rate"] <= 0.1  # uniform random controls, measured at build
    episode = trained.details["episodes"][0]
    assert episode["steps"] == 50 and "return" in episode
    assert "0.02 m" in trained.details["simulator"]["success"]


def test_any_gymnasium_environment_plugs_in_by_id(tmp_path: Path) -> None:
    spec = [InputSpec(name="observation", shape=(1, 4))]

    def cartpole_controller(angle_velocity_gain: float) -> LoadedModel:
        layer = nn.Linear(4, 2, bias=False)  # scores: push left = -(angle + g * angular velocity), right = +
        with torch.no_grad():
            layer.weight.copy_(
                torch.tensor([[0, 0, -1, -angle_velocity_gain], [0, 0, 1, angle_velocity_gain]])
            )
        return _saved(layer, spec, tmp_path / str(angle_velocity_gain))

    balanced = evaluate_closed_loop(cartpole_controller(0.5), "gym:CartPole-v1", episodes=10, seed=0)
    naive = evaluate_closed_loop(cartpole_controller(0.0), "gym:CartPole-v1", episodes=10, seed=0)
    assert balanced.value == 1.0 and balanced.details["mean_steps"] == 500  # return 500 >= threshold 475
    assert naive.value == 0.0 and naive.details["mean_steps"] < 100
    assert "475" in balanced.details["simulator"]["success"]


def test_registry_and_refusals(vla: LoadedModel, reacher: LoadedModel) -> None:
    assert {"reaching", "reaching:single_target", "gym:Reacher-v5"} <= set(list_simulators())
    assert isinstance(get_simulator("gym:CartPole-v1"), GymPlugin)
    with pytest.raises(NotFoundError, match="reaching"):
        get_simulator("mujoco-soccer")
    with pytest.raises(NotFoundError):
        get_simulator("gym:NoSuchEnv-v9")
    with pytest.raises(ValidationError, match="reward threshold"):
        get_simulator("gym:Pendulum-v1")  # no threshold and no predicate: success would be undefined
    with pytest.raises(ValidationError, match="one input"):
        evaluate_closed_loop(vla, "gym:Reacher-v5", episodes=1, seed=0)
    with pytest.raises(ValidationError, match="observes"):
        evaluate_closed_loop(reacher, "reaching", episodes=1, seed=0)
    with pytest.raises(ValidationError, match="episodes"):
        evaluate_closed_loop(vla, "reaching", episodes=0, seed=0)
