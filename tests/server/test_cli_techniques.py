"""`robopt techniques`: every registered technique listed, with availability and the reason when missing."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from server.cli import main
from tools.techniques import Family, Needs, TechniqueConfig, TechniqueSpec, register
from tools.techniques import registry as registry_module
from tools.techniques import techniques


class GhostConfig(TechniqueConfig):
    """A technique whose backend is not installed."""

    type: Literal["test_ghost_backend"] = "test_ghost_backend"


@pytest.fixture
def ghost() -> object:
    spec = TechniqueSpec(
        name="test_ghost_backend",
        family=Family.QUANTIZATION,
        summary="needs a package that is not installed",
        needs=Needs(packages=("robopt_ghost_pkg",), install_hint="pip install robopt-ghost"),
        input_formats=("onnx",),
        output_format="onnx",
        runtimes=("onnxruntime-cpu",),
        precision="int8",
        expected_effect="none",
    )
    register(GhostConfig, spec)(lambda ctx, config: None)  # type: ignore[arg-type,return-value]
    yield
    registry_module._REGISTRY.pop("test_ghost_backend", None)


def test_lists_every_technique_with_status(ghost: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    for name in techniques():
        assert name in out
    ghost_line = next(line for line in out.splitlines() if line.startswith("test_ghost_backend"))
    assert "unavailable" in ghost_line and "pip install robopt-ghost" in ghost_line


def test_json_and_filters(ghost: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["techniques", "--json", "--available"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert all(item["available"] for item in listed)
    assert "test_ghost_backend" not in {item["spec"]["name"] for item in listed}
    assert main(["techniques", "--json", "--family", "quantization"]) == 0
    quantization = json.loads(capsys.readouterr().out)
    assert {item["spec"]["family"] for item in quantization} == {"quantization"}
    assert "test_ghost_backend" in {item["spec"]["name"] for item in quantization}
    assert all("properties" in item["config_schema"] for item in quantization)


def test_unknown_family_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["techniques", "--family", "alchemy"]) == 2
    assert "alchemy" in capsys.readouterr().err
