"""A LeRobotDataset is read with LeRobot's classes: observations by the policy's features, the next chunk of
recorded actions as labels, calibration and held-out parts on different episodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tools.errors import CorruptFileError, InputSpecError, ValidationError
from tools.intake import load_model
from tools.lerobot.dataset import load_lerobot_dataset, split_episodes

pytestmark = pytest.mark.integration


def _episode_frames(labels: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(episode, frame) of each sample: the recorded actions start with (episode, frame)."""
    first = torch.cat([batch[:, 0, :2] for batch in labels])
    return [(int(e), int(f)) for e, f in first.round().tolist()]


def _recorded(dataset_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame's state and action, read plainly with LeRobot (no delta timestamps)."""
    from tools.lerobot.imports import import_lerobot_module

    dataset = import_lerobot_module("lerobot.datasets.lerobot_dataset").LeRobotDataset(
        "local/x", root=dataset_dir
    )
    columns = dataset.hf_dataset.with_format("torch")
    return torch.stack(list(columns["observation.state"])), torch.stack(list(columns["action"]))


def test_labels_are_the_next_chunk_and_episodes_never_straddle(
    lerobot_act_dir: Path, lerobot_dataset_dir: Path, data_dir: Path
) -> None:
    model = load_model(lerobot_act_dir, data_dir=data_dir)
    policy = model.metadata["policy"]
    chunk = policy["chunk_size"]
    data = load_lerobot_dataset(lerobot_dataset_dir, model.input_specs, policy, batch_size=8)
    calibration, held_out = data.split()
    states, actions = _recorded(lerobot_dataset_dir)
    assert calibration.labels is not None and held_out.labels is not None
    for part in (calibration, held_out):
        for batch, labels in zip(part.batches, part.labels):
            assert labels.shape[1:] == (chunk, 6)
            for row, (episode, frame) in enumerate(_episode_frames([labels])):
                index = episode * 20 + frame
                assert frame + chunk <= 20  # never past the episode's end
                torch.testing.assert_close(labels[row], actions[index : index + chunk])
                torch.testing.assert_close(batch["observation_state"][row], states[index])
    calibration_episodes = {episode for episode, _ in _episode_frames(calibration.labels)}
    held_out_episodes = {episode for episode, _ in _episode_frames(held_out.labels)}
    assert calibration_episodes == {0, 1, 2} and held_out_episodes == {3}
    usable = 3 * (20 - chunk + 1)  # 33 frames in batches of equal size (calibrators stack them): 5 x 6
    assert [len(labels) for labels in calibration.labels] == [6] * 5 and usable - 30 < 5
    assert any("held-out acceptance on episodes [3]" in note for note in data.notes)


def test_history_policy_gets_the_previous_frames_repeating_the_first(
    lerobot_diffusion_dir: Path, lerobot_dataset_dir: Path, data_dir: Path
) -> None:
    model = load_model(lerobot_diffusion_dir, data_dir=data_dir)
    policy = model.metadata["policy"]
    assert policy["n_obs_steps"] == 2
    data = load_lerobot_dataset(lerobot_dataset_dir, model.input_specs, policy, batch_size=64)
    states, _ = _recorded(lerobot_dataset_dir)
    checked_start = False
    for batch, labels in zip(data.batches, data.labels or []):
        assert labels.shape[1:] == (policy["chunk_size"], 6)
        for row, (episode, frame) in enumerate(_episode_frames([labels])):
            index = episode * 20 + frame
            previous = index if frame == 0 else index - 1
            torch.testing.assert_close(batch["observation_state"][row, 0], states[previous])
            torch.testing.assert_close(batch["observation_state"][row, 1], states[index])
            checked_start |= frame == 0
    assert checked_start


def test_episode_split_holds_out_whole_episodes() -> None:
    assert split_episodes(range(8)) == split_episodes([7, 6, 5, 4, 3, 2, 1, 0])
    split = split_episodes(range(8))
    assert split.calibration == (0, 1, 2, 3, 4, 5) and split.held_out == (6, 7)
    assert split_episodes([4, 9]).held_out == (9,)
    with pytest.raises(ValidationError, match="at least 2 episodes"):
        split_episodes([0])


def test_a_directory_that_is_not_a_dataset_is_refused(
    lerobot_act_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    model = load_model(lerobot_act_dir, data_dir=data_dir)
    with pytest.raises(InputSpecError, match="not a LeRobotDataset: it has no meta/info.json"):
        load_lerobot_dataset(tmp_path, model.input_specs, model.metadata["policy"])


def test_a_dataset_without_the_policys_features_names_them(
    lerobot_act_dir: Path, lerobot_dataset_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    model = load_model(lerobot_act_dir, data_dir=data_dir)
    copy = shutil.copytree(lerobot_dataset_dir, tmp_path / "no_camera")
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.front"] = info["features"].pop("observation.images.top")
    info_path.write_text(json.dumps(info))
    with pytest.raises(InputSpecError) as caught:
        load_lerobot_dataset(copy, model.input_specs, model.metadata["policy"])
    message = caught.value.message
    assert "no feature 'observation.images.top'" in message
    assert "the policy expects 'observation.images.top', 'observation.state'" in message
    assert "observation.images.front" in message


def test_an_incomplete_dataset_is_refused_without_asking_the_hub(
    lerobot_act_dir: Path, lerobot_dataset_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    model = load_model(lerobot_act_dir, data_dir=data_dir)
    copy = shutil.copytree(lerobot_dataset_dir, tmp_path / "no_data")
    shutil.rmtree(copy / "data")  # LeRobot would download the missing episodes from the Hub
    with pytest.raises(CorruptFileError, match="from its local files: OfflineModeIsEnabled"):
        load_lerobot_dataset(copy, model.input_specs, model.metadata["policy"])
