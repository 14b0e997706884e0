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
from tools.inputs import InputSpec, check_data_matches, load_input_data, parse_input_spec, synthesize_inputs


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
    with pytest.raises(InputSpecError, match="no tensor named 'state'"):
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
