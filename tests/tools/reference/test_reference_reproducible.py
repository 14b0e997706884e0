"""Shipped reference weights: verified on load, refused when altered, and a retrain judged by behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tools.errors import CorruptFileError, NotFoundError
from tools.reference import build_reference, load_reference_module, read_reference_metadata
from tools.reference.reacher import ReacherPolicy, ReacherTraining, train_reacher_policy
from tools.reference.reproducible import TRAINED_REFERENCES, weights_digest
from tools.reference.retrain import compare_with_shipped, probe_behaviour
from tools.reference.shipped import (
    ACTION_ERROR_BAND,
    RECORD_FILE,
    SUCCESS_BAND,
    WEIGHTS_DIR,
    Behaviour,
    compare_behaviour,
    load_shipped_weights,
    read_record,
    ship_weights,
    shipped_parameter_count,
)

PROBE_EPISODES = 50  # test size: the retrain comparison on 50 of the reference's 100 evaluation episodes


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _copy_shipped(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the record and the reacher weights, to alter without touching the repository."""
    weights = tmp_path / "weights"
    weights.mkdir()
    record = read_record()
    entry = record["weights"]["reacher-seed0"]
    shutil.copy(WEIGHTS_DIR / entry["file"], weights / entry["file"])
    (tmp_path / "record.json").write_text(json.dumps({"weights": {"reacher-seed0": entry}}))
    return tmp_path / "record.json", weights / entry["file"]


def test_digest_follows_every_bit_of_the_weights() -> None:
    model = _toy()
    digest = weights_digest(model)
    assert digest == weights_digest(_toy()) and len(digest) == 64
    with torch.no_grad():
        model[0].weight.view(torch.int32)[0, 0] ^= 1  # the last mantissa bit of one weight
    assert weights_digest(model) != digest


def test_the_repository_ships_every_trained_reference_and_its_checksum() -> None:
    record = read_record()
    for name in TRAINED_REFERENCES:
        entry = record["weights"][f"{name}-seed0"]
        state = load_shipped_weights(name, 0)  # verifies the file's sha256
        assert state and (WEIGHTS_DIR / entry["file"]).stat().st_size == entry["bytes"]
        assert entry["behaviour"]["closed_loop_success"] > 0.5 and entry["trained_on"]["cpu"]


def test_the_shipped_parameter_count_is_read_from_the_header_without_loading(tmp_path: Path) -> None:
    """The count the chat's intake is given for a reference: every value of the shipped state dict."""
    for name in TRAINED_REFERENCES:
        state = load_shipped_weights(name, 0)
        assert shipped_parameter_count(name) == sum(tensor.numel() for tensor in state.values())
    policy = ReacherPolicy()
    assert shipped_parameter_count("reacher") >= sum(p.numel() for p in policy.parameters())
    assert shipped_parameter_count("hf_smolvlm") is None  # random weights built on demand: nothing ships
    assert shipped_parameter_count("reacher", 3) is None
    record, weights = _copy_shipped(tmp_path)
    weights.write_bytes(b"not safetensors")
    assert shipped_parameter_count("reacher", 0, record, weights.parent) is None


def test_a_shipped_file_with_one_flipped_byte_is_refused_naming_it(tmp_path: Path) -> None:
    record, weights = _copy_shipped(tmp_path)
    assert load_shipped_weights("reacher", 0, record, weights.parent)  # the intact copy loads
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: still valid SafeTensors, other numbers
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="sha256") as caught:
        load_shipped_weights("reacher", 0, record, weights.parent)
    assert str(weights) in str(caught.value) and caught.value.hint
    weights.unlink()
    with pytest.raises(NotFoundError, match="missing") as missing:
        load_shipped_weights("reacher", 0, record, weights.parent)
    assert str(weights) in str(missing.value)
    with pytest.raises(NotFoundError, match="reacher-seed3"):
        load_shipped_weights("reacher", 3, record, weights.parent)
    record.write_text("{")
    with pytest.raises(CorruptFileError, match="record.json"):
        load_shipped_weights("reacher", 0, record, weights.parent)


def test_building_a_reference_loads_the_shipped_weights_without_training(tmp_path: Path) -> None:
    directory = build_reference("reacher", tmp_path / "cache")
    metadata = read_reference_metadata(directory)
    entry = read_record()["weights"]["reacher-seed0"]
    assert metadata["weights"]["source"] == "shipped" and metadata["weights"]["sha256"] == entry["sha256"]
    assert metadata["timings"]["training_seconds"] == 0.0
    model = load_reference_module(directory)
    assert weights_digest(model) == entry["weights_sha256"]  # the exported model holds the shipped bytes
    shipped = ReacherPolicy()
    shipped.load_state_dict(load_shipped_weights("reacher", 0))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.state_dict().values()))
    # what the build measured is what the record says the shipped weights do (same seeded episodes)
    assert metadata["metrics"]["closed_loop"]["success_rate"] == entry["behaviour"]["closed_loop_success"]


def test_a_retrain_with_other_bytes_is_accepted_when_it_behaves_within_the_band(tmp_path: Path) -> None:
    directory = build_reference("reacher", tmp_path / "cache")
    # A retrain from the recipe on this process's own (unpinned) kernels and another seed: other bytes.
    retrained, _ = train_reacher_policy(ReacherTraining(seed=1))
    comparison = compare_with_shipped("reacher", retrained, directory, episodes=PROBE_EPISODES)
    assert not comparison.bytes_identical
    assert comparison.accepted, comparison.summary()
    assert abs(comparison.retrained_success - comparison.shipped_success) <= SUCCESS_BAND
    assert 0 < comparison.action_agreement_rel_l2 < 1
    # The recipe cut short is a different policy: refused, with the reason.
    undertrained, _ = train_reacher_policy(ReacherTraining(steps=40))
    refused = compare_with_shipped("reacher", undertrained, directory, episodes=PROBE_EPISODES)
    assert not refused.accepted and refused.reasons
    assert refused.retrained_success < refused.shipped_success - SUCCESS_BAND
    assert "success" in refused.summary()


def test_the_band_is_two_sided_and_stated() -> None:
    actions = np.ones((4, 2), dtype=np.float32)
    shipped = Behaviour(0.90, 100, 0.010, actions)
    assert compare_behaviour("x", shipped, Behaviour(0.93, 100, 0.012, actions), False).accepted
    too_good = compare_behaviour("x", shipped, Behaviour(1.0, 100, 0.010, actions), False)
    assert not too_good.accepted and "+0.10" in too_good.reasons[0]
    worse_actions = compare_behaviour(
        "x", shipped, Behaviour(0.9, 100, 0.010 * ACTION_ERROR_BAND * 1.1, actions), False
    )
    assert not worse_actions.accepted and "action MSE" in worse_actions.reasons[0]
    other_probe = compare_behaviour("x", shipped, Behaviour(0.9, 50, 0.010, actions), False)
    assert not other_probe.accepted


def test_record_writes_a_file_the_loader_verifies(tmp_path: Path) -> None:
    model = ReacherPolicy()
    record = tmp_path / "record.json"
    path = ship_weights(
        "reacher", 5, model, {"training": {"steps": 1}}, {"closed_loop_success": 0.0}, record, tmp_path
    )
    entry = read_record(record)["weights"]["reacher-seed5"]
    assert path.name == entry["file"] and entry["weights_sha256"] == weights_digest(model)
    loaded = load_shipped_weights("reacher", 5, record, tmp_path)
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed when complete


def test_probe_behaviour_separates_a_trained_policy_from_an_untrained_one(tmp_path: Path) -> None:
    directory = build_reference("reacher", tmp_path / "cache")
    trained = probe_behaviour("reacher", load_reference_module(directory), episodes=20)
    untrained = probe_behaviour("reacher", ReacherPolicy(), episodes=20)
    assert trained.success_rate >= 0.9 > 0.2 >= untrained.success_rate
    assert trained.action_mse * 10 < untrained.action_mse
    assert RECORD_FILE.is_file()
