"""Input specs parse from flags, synthesize deterministic inputs, and user data loads without running code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tools.errors import InputSpecError, UnsafeFileError
from tools.inputs import (
    InputSpec,
    align_data,
    check_data_matches,
    load_input_data,
    parse_input_spec,
    synthesize_inputs,
)


def test_parse_round_trips_and_reads_ranges() -> None:
    spec = parse_input_spec("input_ids:1x16:int64:0-32000")
    assert (spec.name, spec.shape, spec.dtype, spec.low, spec.high) == (
        "input_ids",
        (1, 16),
        "int64",
        0,
        32000,
    )
    assert parse_input_spec(spec.to_flag()) == spec
    assert parse_input_spec("pixel_values:1x3x224x224:fp16").dtype == "float16"


@pytest.mark.parametrize(
    "text", ["pixel_values", "x:1x0:float32", "x:1x3:complex7", "x:axb:float32", ":1x3:float32"]
)
def test_malformed_specs_name_the_problem(text: str) -> None:
    with pytest.raises(InputSpecError, match="input spec"):
        parse_input_spec(text)


def test_synthesis_is_deterministic_and_respects_ranges_and_prefix() -> None:
    specs = [
        InputSpec(name="ids", shape=(1, 40), dtype="int64", low=5, high=9, prefix=(99, 99, 99)),
        InputSpec(name="image", shape=(1, 3, 8, 8)),
    ]
    first, second = synthesize_inputs(specs, seed=3), synthesize_inputs(specs, seed=3)
    assert torch.equal(first["ids"], second["ids"]) and torch.equal(first["image"], second["image"])
    assert first["ids"][0, :3].tolist() == [99, 99, 99]
    assert int(first["ids"][0, 3:].min()) >= 5 and int(first["ids"][0, 3:].max()) < 9
    assert not torch.equal(first["image"], synthesize_inputs(specs, seed=4)["image"])


def test_user_data_loads_from_npz_safetensors_and_weights_only_pt(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.float32).reshape(3, 8)
    np.savez(tmp_path / "d.npz", state=array)
    save_file({"state": torch.from_numpy(array)}, str(tmp_path / "d.safetensors"))
    torch.save({"state": torch.from_numpy(array)}, tmp_path / "d.pt")
    for name in ("d.npz", "d.safetensors", "d.pt"):
        data = load_input_data(tmp_path / name)
        np.testing.assert_array_equal(data["state"].numpy(), array)
        check_data_matches([InputSpec(name="state", shape=(1, 8))], data)


def test_data_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", obs=np.zeros((3, 8), dtype=np.float32))
    data = load_input_data(tmp_path / "d.npz")
    with pytest.raises(InputSpecError, match="no array for input 'state'"):
        check_data_matches([InputSpec(name="state", shape=(1, 8))], data)
    with pytest.raises(InputSpecError, match="expects"):
        check_data_matches([InputSpec(name="obs", shape=(1, 9))], data)


class _Command:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_pickled_data_file_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with (tmp_path / "evil.pt").open("wb") as handle:
        pickle.dump({"state": _Command(marker)}, handle)
    with pytest.raises(UnsafeFileError, match="weights-only"):
        load_input_data(tmp_path / "evil.pt")
    assert not marker.exists()


def _lerobot_specs(history: int = 1) -> list[InputSpec]:
    frames = (history,) if history > 1 else ()
    return [
        InputSpec(name="observation_images_top", shape=(1, *frames, 3, 8, 8)),
        InputSpec(name="observation_state", shape=(1, *frames, 6)),
    ]


def test_lerobot_feature_keys_feed_the_safe_input_names() -> None:
    data = {"observation.images.top": torch.rand(5, 3, 8, 8), "observation.state": torch.rand(5, 6)}
    data["action"] = torch.rand(5, 4)
    aliases = {"observation_images_top": "observation.images.top", "observation_state": "observation.state"}
    aligned, notes = align_data(_lerobot_specs(), data, aliases)
    assert set(aligned) == {
        "observation_images_top",
        "observation_state",
        "action",
    }  # labels kept as they are
    assert torch.equal(aligned["observation_state"], data["observation.state"])
    assert any("'observation.state' feeds input 'observation_state'" in note for note in notes)
    # without the policy's own map (an ONNX version), the safe spelling still finds them
    assert set(align_data(_lerobot_specs(), data)[0]) == set(aligned)
    same, untouched = align_data(_lerobot_specs(), {**aligned})  # the safe names themselves work as before
    assert not untouched and torch.equal(same["observation_state"], aligned["observation_state"])


def test_a_missing_feature_names_both_spellings_and_what_the_policy_takes() -> None:
    aliases = {"observation_images_top": "observation.images.top", "observation_state": "observation.state"}
    with pytest.raises(InputSpecError) as caught:
        align_data(_lerobot_specs(), {"observation.state": torch.rand(5, 6)}, aliases)
    message = str(caught.value)
    assert "'observation.images.top' (or 'observation_images_top')" in message
    assert "has: observation_state" in message and "the model takes:" in message
    with pytest.raises(InputSpecError, match="all spell input"):
        align_data(
            _lerobot_specs(),
            {"observation.state": torch.rand(5, 6), "observation/state": torch.rand(5, 6)},
        )


def test_single_frames_are_stacked_into_the_policys_history_like_lerobots_queue() -> None:
    frames = {"observation.images.top": torch.rand(5, 3, 8, 8), "observation.state": torch.rand(5, 6)}
    aligned, notes = align_data(_lerobot_specs(history=2), frames, history_steps=2)
    assert aligned["observation_images_top"].shape == (5, 2, 3, 8, 8)
    assert torch.equal(aligned["observation_state"][:, 0], frames["observation.state"])
    assert torch.equal(aligned["observation_state"][:, 1], frames["observation.state"])
    assert sum("history of 2 copies" in note for note in notes) == 2
    history = {key: value.unsqueeze(1).repeat(1, 2, *[1] * (value.ndim - 1)) for key, value in frames.items()}
    history["observation.state"][:, 1] += 1.0  # a real history is kept as given, not overwritten
    kept, _ = align_data(_lerobot_specs(history=2), history, history_steps=2)
    assert torch.equal(kept["observation_state"], history["observation.state"])
    with pytest.raises(InputSpecError, match="expects"):  # without the policy's history, frames do not fit
        align_data(_lerobot_specs(history=2), frames)
