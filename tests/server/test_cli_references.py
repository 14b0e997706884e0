"""`robopt analyze --json` on every reference model and on every exported format of the reference VLA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main
from tools.reference import REFERENCE_MODELS, read_reference_metadata, reference_model_file

pytestmark = pytest.mark.integration


def _analyze(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["--data-dir", str(data_dir), "analyze", *args, "--json", "--no-latency"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_every_reference_model_is_analyzed(
    name: str, reference_cache: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, options = reference_model_file(name, reference_cache)
    flags = (
        ["--arch", options.architecture, "--config", str(options.config_path)] if options.architecture else []
    )
    profile = _analyze(data_dir, capsys, str(path), *flags)
    assert profile["parameters"] > 0 and profile["flops"] > 0
    if name == "vla":
        roles = {c["role"] for c in profile["components"]}
        assert {"vision_tower", "language_backbone", "action_head"} <= roles
        assert profile["architecture"]["is_vla"] is True
        assert 5_000_000 <= profile["parameters"] <= 20_000_000
        assert [o["shape"] for o in profile["outputs"]] == [[1, 8, 2]]


def test_every_vla_export_gives_the_same_profile(
    built_vla: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = read_reference_metadata(built_vla)
    arch = ["--arch", metadata["architecture"], "--config", str(built_vla / metadata["config_file"])]
    flags = {
        "torch_state_dict": arch,
        "safetensors": arch,
        "torch_pickled_module": ["--trust-pickle"],
        "torchscript": [],
        "onnx": [],
    }
    profiles = {
        fmt: _analyze(data_dir, capsys, str(built_vla / file), *flags[fmt])
        for fmt, file in metadata["formats"].items()
    }
    assert set(profiles) == set(flags)
    for fmt, profile in profiles.items():
        assert profile["format"] == fmt
        assert [i["name"] for i in profile["inputs"]] == ["pixel_values", "input_ids", "proprio"], fmt
    counts = {fmt: p["parameters"] for fmt, p in profiles.items()}
    torch_count = counts["torch_state_dict"]
    assert all(count == torch_count for fmt, count in counts.items() if fmt != "onnx"), counts
    assert abs(counts["onnx"] - torch_count) / torch_count < 0.01, counts  # exporters may fold constants
    torch_flops = profiles["torch_state_dict"]["flops"]
    assert abs(profiles["onnx"]["flops"] - torch_flops) / torch_flops < 0.05
