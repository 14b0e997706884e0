"""The reaching task: rendering, tokenizer, expert, dataset, and the closed-loop success measure."""

from __future__ import annotations

import numpy as np
import pytest

from tools.errors import ValidationError
from tools.reference.reaching import (
    COLOURS,
    PAD_ID,
    TOKEN_IDS,
    VOCABULARY,
    ReachingConfig,
    ReachingEnv,
    make_dataset,
    random_policy,
    render,
    rollout_success,
    tokenize,
    wilson_interval,
)


def test_tokenizer_is_fixed_and_padded() -> None:
    ids = tokenize("Reach the red target", max_tokens=6)
    assert ids.dtype == np.int64 and ids.shape == (6,)
    assert ids.tolist() == [
        TOKEN_IDS["<bos>"],
        TOKEN_IDS["reach"],
        TOKEN_IDS["the"],
        TOKEN_IDS["red"],
        TOKEN_IDS["target"],
        PAD_ID,
    ]
    assert tokenize("reach the purple target")[3] == TOKEN_IDS["<unk>"]
    assert len(set(VOCABULARY)) == len(VOCABULARY) and all(colour in TOKEN_IDS for colour in COLOURS)
    with pytest.raises(ValidationError):
        tokenize("go to the red target right now please", max_tokens=6)


def test_render_draws_targets_and_effector_where_they_are() -> None:
    config = ReachingConfig()
    image = render(np.array([[0.25, 0.75]]), ["red"], np.array([0.8, 0.2]), config)
    assert image.shape == (3, 64, 64) and image.dtype == np.float32
    np.testing.assert_allclose(image[:, 48, 16], COLOURS["red"], atol=1e-6)  # row = y * 64, column = x * 64
    np.testing.assert_allclose(image[:, 12, 51], [1.0, 1.0, 1.0])
    assert image[0, 12, 16] < 0.5  # background elsewhere


def test_expert_controller_always_succeeds_and_chance_does_not() -> None:
    env = ReachingEnv()
    reached = 0
    for seed in range(50):
        env.reset(seed)
        while not env.done:
            env.step(env.expert_chunk()[0])
        reached += env.success
    assert reached == 50
    chance = rollout_success(random_policy(seed=0), episodes=100, seed=0)
    assert chance.success_rate < 0.25 and chance.episodes == 100


def test_rollout_reports_wilson_interval_and_rejects_bad_policies() -> None:
    result = rollout_success(lambda obs: np.zeros((len(obs["proprio"]), 8, 2)), episodes=20, seed=5)
    assert result.ci_low <= result.success_rate <= result.ci_high and result.episodes == 20
    low, high = wilson_interval(45, 50)
    assert 0.78 < low < 0.9 < high < 0.97
    with pytest.raises(ValidationError):
        rollout_success(lambda obs: np.zeros((1, 2)), episodes=2)
    with pytest.raises(ValidationError):
        rollout_success(random_policy(), episodes=0)


def test_episode_api_and_step_cap() -> None:
    env = ReachingEnv()
    first = env.reset(seed=3)
    assert set(first) == {"pixel_values", "input_ids", "proprio"}
    assert 2 <= len(env.targets) <= 4 and env.colours[env.goal_index] in env.instruction
    start = env.effector.copy()
    env.step(np.array([5.0, 0.0]))
    assert np.linalg.norm(env.effector - start) <= env.config.max_step + 1e-6
    np.testing.assert_array_equal(ReachingEnv().reset(seed=3)["pixel_values"], first["pixel_values"])


def test_dataset_is_seeded_and_labelled_by_the_expert() -> None:
    first, second = make_dataset(32, seed=7), make_dataset(32, seed=7)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["pixel_values"], make_dataset(32, seed=8)["pixel_values"])
    assert first["actions"].shape == (32, 8, 2)
    assert np.linalg.norm(first["actions"], axis=-1).max() <= ReachingConfig().max_step + 1e-6
    with pytest.raises(ValidationError):
        make_dataset(0, seed=0)
