"""Tests of LeRobot's simulators as plugins (gym-pusht, gym-aloha) and of closed-loop action agreement:
LeRobot-named observations reach the policy, the same policy agrees with itself exactly, a perturbed copy
measurably does not, and two runs with the same seeds give the same figures."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tools.evaluation.agreement import evaluate_closed_loop_agreement, success_figure
from tools.evaluation.closed_loop import evaluate_closed_loop
from tools.evaluation.evaluate import AccuracyPlan, companion_figures, measure_accuracy
from tools.evaluation.simulators import AlohaPlugin, PushTPlugin, get_simulator
from tools.inputs import InputSpec
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_thread")]
pytest.importorskip("gym_pusht", reason="the sim extra is not installed (pip install 'robopt[sim]')")


class _ToyPolicy(nn.Module):
    """Image + state -> an action chunk around `center` (a stand-in for a LeRobot policy's raw interface)."""

    def __init__(self, state_dim: int, action_dim: int, chunk: int, center: float, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.head = nn.Linear(4 + state_dim, chunk * action_dim)
        self.shape = (chunk, action_dim)
        self.center, self.scale = center, scale

    def forward(self, image: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        features = self.conv(image).mean(dim=(2, 3))
        raw = self.head(torch.cat([features, state / (1 + state.abs().max())], dim=1))
        return self.center + self.scale * torch.tanh(raw).reshape(-1, *self.shape)


def _loaded(module: nn.Module, specs: list[InputSpec], **metadata: object) -> LoadedModel:
    path = Path("in-memory")
    return LoadedModel(
        path,
        path,
        ModelFormat.TORCH_PICKLED_MODULE,
        LoadOptions(),
        specs,
        module=module.eval(),
        metadata=metadata,
    )


def _perturbed(model: LoadedModel, noise: float) -> LoadedModel:
    module = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    return _loaded(module, model.input_specs, **model.metadata)


def _pusht_policy() -> LoadedModel:
    specs = [
        InputSpec(name="observation.image", shape=(1, 3, 96, 96)),
        InputSpec(name="observation.state", shape=(1, 2)),
    ]
    return _loaded(_ToyPolicy(2, 2, chunk=8, center=256.0, scale=200.0), specs, policy={"n_action_steps": 4})


def _aloha_policy() -> LoadedModel:
    specs = [
        InputSpec(name="observation.images.top", shape=(1, 3, 48, 64)),
        InputSpec(name="observation.state", shape=(1, 14)),
    ]
    return _loaded(_ToyPolicy(14, 14, chunk=10, center=0.0, scale=0.5), specs, policy={"n_action_steps": 5})


def test_pusht_adapter_feeds_lerobot_names_and_binds_the_chunk() -> None:
    plugin = PushTPlugin(max_steps=10)
    history_spec = InputSpec(name="observation.image", shape=(1, 2, 3, 64, 64))
    plugin.bind(
        [history_spec, InputSpec(name="observation.state", shape=(1, 2, 2))],
        {"policy": {"n_action_steps": 8}},
    )
    assert plugin.history == 2 and plugin.actions_per_call == 8
    env, observation = plugin.make_env(3)
    try:
        first = plugin.adapter([observation], [history_spec])["observation.image"]
        assert first.shape == (1, 2, 3, 64, 64) and first.dtype == np.float32
        assert 0.0 <= first.min() and first.max() <= 1.0 and first.std() > 0.01  # a real image, in [0, 1]
        np.testing.assert_array_equal(first[0, 0], first[0, 1])  # the first frame fills the history
        observation, _ = plugin.step(env, np.array([400.0, 100.0]))
        state = plugin.adapter([observation], [InputSpec(name="observation.state", shape=(1, 2, 2))])
        assert state["observation.state"].shape == (1, 2, 2)
        assert not np.allclose(state["observation.state"][0, 0], state["observation.state"][0, 1])  # it moved
    finally:
        plugin.close(env)


def test_pusht_agreement_is_exact_for_the_same_policy_and_not_for_a_perturbed_copy() -> None:
    original = _pusht_policy()
    plugin = PushTPlugin(max_steps=30)
    same = evaluate_closed_loop_agreement(original, _pusht_policy(), plugin, episodes=2, seed=5)
    assert same.level == "closed_loop_agreement" and same.metric == "action_agreement"
    assert same.value == 1.0 and same.details["action_max_abs_error"] == 0.0
    assert same.details["trajectory_divergence"]["max"] == 0.0
    assert same.details["compared_steps"] == 60
    perturbed = _perturbed(original, 0.3)
    worse = evaluate_closed_loop_agreement(original, perturbed, plugin, episodes=2, seed=5)
    assert worse.value < 0.99 and worse.value == pytest.approx(
        max(0.0, 1 - worse.details["action_normalized_error"])
    )
    # PushT's actions are pixel targets around 256: the plain relative L2 hides what the normalized error shows
    assert worse.details["action_normalized_error"] > 2 * worse.details["action_relative_l2"] > 0
    assert worse.details["trajectory_divergence"]["mean"] > 1.0  # pixels: the candidate pushes elsewhere
    again = evaluate_closed_loop_agreement(original, perturbed, plugin, episodes=2, seed=5)
    assert again.details["action_relative_l2"] == worse.details["action_relative_l2"]
    assert again.details["trajectory_divergence"] == worse.details["trajectory_divergence"]
    success = success_figure(worse)
    assert success.level == "closed_loop" and success.samples == 2


def test_aloha_agreement_and_plan_through_measure_accuracy() -> None:
    pytest.importorskip("gym_aloha", reason="gym-aloha is not installed (pip install --no-deps gym-aloha)")
    original = _aloha_policy()
    plugin = AlohaPlugin(fast_render=True, max_steps=10)
    env, observation = plugin.make_env(0)
    try:
        plugin.bind(original.input_specs, original.metadata)
        inputs = plugin.adapter([observation], original.input_specs)
        assert inputs["observation.images.top"].shape == (1, 3, 48, 64)
        assert inputs["observation.state"].shape == (1, 14)
        assert list(observation["history"][-1]["pixels"]) == ["top"]  # only the camera a policy reads
    finally:
        plugin.close(env)
    same = evaluate_closed_loop_agreement(original, _aloha_policy(), plugin, episodes=1, seed=0)
    assert same.value == 1.0 and same.details["trajectory_divergence"]["max"] == 0.0
    worse = evaluate_closed_loop_agreement(original, _perturbed(original, 0.3), plugin, episodes=1, seed=0)
    assert worse.details["action_relative_l2"] > 0.01 and worse.details["trajectory_divergence"]["max"] > 0
    again = evaluate_closed_loop_agreement(original, _perturbed(original, 0.3), plugin, episodes=1, seed=0)
    assert again.details["action_relative_l2"] == worse.details["action_relative_l2"]


def test_named_plans_judge_by_agreement_and_keep_the_success_rate() -> None:
    from server.jobs import accuracy_plan

    plan = accuracy_plan("pusht", has_labels=False, episodes=1)
    assert plan.level == "closed_loop_agreement" and accuracy_plan("reaching", False).level == "closed_loop"
    assert accuracy_plan("aloha", False).episodes == 10 and accuracy_plan("reaching", False).episodes == 100
    original = _pusht_policy()
    result = measure_accuracy(plan.model_copy(update={"seed": 7}), original, reference=_pusht_policy())
    assert result.value == 1.0 and result.samples > 0
    (success,) = companion_figures(result)
    plain = evaluate_closed_loop(original, get_simulator("pusht"), episodes=1, seed=7)
    assert success.value == plain.value  # the same episodes as the success-rate measurement
    with pytest.raises(Exception, match="needs the original"):
        measure_accuracy(AccuracyPlan(level="closed_loop_agreement", simulator="pusht", episodes=1), original)


def test_a_goal_on_success_rate_is_judged_by_the_success_rate_of_the_same_episodes() -> None:
    from agents.intake import AccuracyKind, IntakeInput, parse_goal_rules
    from tools.evaluation.criteria import check_criteria
    from tools.evaluation.measurement import Measurement

    job = AccuracyKind(level="closed_loop_agreement", metric="action_agreement", higher_is_better=True)
    goal = parse_goal_rules(
        IntakeInput(text="2x faster, lose at most 5 points of success rate", accuracy=job)
    )
    assert (goal.criteria.accuracy_level, goal.criteria.accuracy_metric) == ("closed_loop", "success_rate")
    assert not any("can be checked only once" in note for note in goal.assumptions)
    original = _pusht_policy()
    plugin = PushTPlugin(max_steps=20)
    figures = []
    for candidate in (_pusht_policy(), _perturbed(original, 0.3)):
        agreement = evaluate_closed_loop_agreement(original, candidate, plugin, episodes=1, seed=3)
        figures.append(
            Measurement(
                version_id="v", technique="t", accuracy=agreement, other_accuracy=companion_figures(agreement)
            )
        )
    check = check_criteria(goal.criteria.model_copy(update={"min_speedup": None}), figures[0], figures[1])
    (accuracy,) = [r for r in check.results if r.name == "max_accuracy_drop"]
    assert "closed-loop success_rate" in accuracy.note and accuracy.passed  # no success either way here


def test_a_steps_suffix_cuts_lerobot_episodes_and_is_refused_elsewhere() -> None:
    from tools.errors import ValidationError
    from tools.evaluation.simulators import judges_by_agreement, split_simulator_name

    assert split_simulator_name("aloha:fast:steps=20") == ("aloha:fast", 20)
    assert split_simulator_name("pusht") == ("pusht", None)
    assert get_simulator("pusht:steps=20").max_steps == 20 < get_simulator("pusht").max_steps
    fast = get_simulator("aloha:fast:steps=15")
    assert fast.max_steps == 15 and fast.fast_render
    assert judges_by_agreement("aloha:fast:steps=15") and not judges_by_agreement("reaching")
    with pytest.raises(ValidationError, match="only LeRobot's simulators"):
        get_simulator("reaching:steps=5")
    with pytest.raises(ValidationError, match="positive integer"):
        get_simulator("pusht:steps=0")
