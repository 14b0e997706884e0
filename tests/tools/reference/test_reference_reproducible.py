"""The recorded sha256 of a trained reference's weights: how it is computed, recorded and enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tools.errors import CorruptFileError, OptimizationError
from tools.reference.reproducible import (
    DIGESTS_FILE,
    RECORD_FLAG,
    TRAINED_REFERENCES,
    check_weights,
    library_versions,
    weights_digest,
)


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def test_digest_follows_every_bit_of_the_weights() -> None:
    model = _toy()
    digest = weights_digest(model)
    assert digest == weights_digest(_toy()) and len(digest) == 64
    with torch.no_grad():
        weight = model[0].weight
        bits = weight.view(torch.int32)
        bits[0, 0] ^= 1  # the last mantissa bit of one weight
    assert weights_digest(model) != digest
    assert weights_digest(_toy(1)) != digest


def test_other_weights_fail_loudly_naming_the_cpu(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    model = _toy()
    record.write_text(json.dumps({"sha256": {"toy-seed0": "0" * 64}, "versions": library_versions()}))
    with pytest.raises(OptimizationError, match="flags: ") as caught:
        check_weights("toy", 0, model, record)
    assert "0" * 64 in str(caught.value) and weights_digest(model) in str(caught.value)
    record.write_text(
        json.dumps({"sha256": {"toy-seed0": weights_digest(model)}, "versions": library_versions()})
    )
    assert check_weights("toy", 0, model, record) == weights_digest(model)
    assert check_weights("toy", 1, _toy(1), record) == weights_digest(_toy(1))  # unrecorded seeds pass
    # other library versions build other weights: reported, not compared
    record.write_text(json.dumps({"sha256": {"toy-seed0": "0" * 64}, "versions": {"torch": "0.0"}}))
    assert check_weights("toy", 0, model, record) == weights_digest(model)
    record.write_text("{")
    with pytest.raises(CorruptFileError, match="record.json"):
        check_weights("toy", 0, model, record)


def test_record_mode_writes_the_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record.json"
    monkeypatch.setenv(RECORD_FLAG, "1")
    check_weights("toy", 0, _toy(), record)
    written = json.loads(record.read_text())
    assert written == {"sha256": {"toy-seed0": weights_digest(_toy())}, "versions": library_versions()}


def test_the_repository_records_every_trained_reference() -> None:
    record = json.loads(DIGESTS_FILE.read_text())
    assert {f"{name}-seed0" for name in TRAINED_REFERENCES} <= set(record["sha256"])
    assert all(len(digest) == 64 for digest in record["sha256"].values())
    assert {"torch", "numpy", "mujoco"} <= set(record["versions"])
