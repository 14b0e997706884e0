"""Architecture search: spaces derived from models, exact weight slicing, and a seeded multi-objective search."""

from __future__ import annotations

import time
from pathlib import Path

import pydantic
import pytest
import torch
from torch import nn

from tests.technique_support import load, store_reference, store_vla_onnx
from tools.architecture_search.search import (
    DIRECTIONS,
    ArchitectureSearchConfig,
    Candidate,
    compare_latency,
    dominates,
    pareto_front,
    pick_candidate,
    search_architectures,
)
from tools.architecture_search.slicing import (
    block_importance,
    kept_blocks,
    slice_architecture,
    verify_space,
)
from tools.architecture_search.space import derive_search_space
from tools.distillation import fidelity
from tools.errors import OptimizationError, ValidationError
from tools.reference import build_reference
from tools.reference.calibration import reaching_calibration
from tools.reference.conv_policy import ConvPolicy
from tools.reference.vla import TinyVLA
from tools.techniques import apply
from tools.versions import VersionStore

pytestmark = pytest.mark.usefixtures("single_thread")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    return reaching_calibration(1, batch, with_labels=False).batches[0]


def test_the_space_of_tinyvla_covers_depth_heads_mlp_widths_and_stem_channels() -> None:
    model = TinyVLA().eval()
    space = derive_search_space(model)
    dims = {d.name: d for d in space.dimensions}
    assert dims["blocks.depth"].choices == (1, 2)
    assert dims["blocks.heads"].choices == (1, 2, 3, 4) and dims["blocks.heads"].groups[0].unit_size == 32
    assert dims["blocks.mlp_hidden"].choices == (128, 256, 384, 512)
    assert dims["language_backbone.blocks.heads"].original == 4
    assert "language_backbone.blocks.depth" not in dims, "a one-block stack has no depth to search"
    assert dims["vision_tower.stem.0.channels"].choices == (4, 8, 12, 16)
    film = dims["vision_tower.stem.0.channels"].groups[0]
    assert film.producers == ("vision_tower.stem.0.conv", "vision_tower.stem.0.film") and film.chunks == (
        1,
        2,
    )
    assert dims["vision_tower.stem.3.channels"].groups[0].consumers == ("vision_tower.patch_proj",)
    assert dims["action_head.mlp.hidden"].original == 1024 and len(dims["action_head.mlp.hidden"].groups) == 3
    assert space.size() == 2 * 4**10
    protected = derive_search_space(model, protected=("action_head", "vision_tower"))
    assert not any(d.path.startswith(("action_head", "vision_tower")) for d in protected.dimensions)
    assert "blocks.depth" in {d.name for d in protected.dimensions}


@pytest.mark.parametrize("make", [TinyVLA, ConvPolicy])
def test_every_dimension_slices_exactly_and_the_smallest_candidate_keeps_the_output_shape(make: type) -> None:
    torch.manual_seed(0)
    model = make().eval()
    inputs = _inputs()
    if make is ConvPolicy:
        inputs = {k: inputs[k] for k in ("pixel_values", "proprio")}
    space = derive_search_space(model)
    verified, left_out = verify_space(model, space, inputs, block_importance(model, space, inputs))
    assert left_out == {} and verified == space
    smallest = slice_architecture(model, space, {d.name: d.choices[0] for d in space.dimensions})
    with torch.no_grad():
        assert smallest(**inputs).shape == model(**inputs).shape
    assert _params(smallest) < 0.35 * _params(model)
    assert type(smallest.get_submodule(space.dimensions[0].path)) is type(
        model.get_submodule(space.dimensions[0].path)
    )


class _Interleaved(nn.Module):
    """A FiLM-like stage whose Linear interleaves scale and shift: chunk slicing would be wrong here."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.film = nn.Linear(4, 2 * channels)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        film = self.film(condition)
        return self.conv(image) * film[:, 0::2, None, None] + film[:, 1::2, None, None]


class _InterleavedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([_Interleaved(8), _Interleaved(8)])
        self.stages[1].conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            image = stage(image, condition)
        return self.head(image.mean(dim=(2, 3)))


def test_verification_leaves_out_a_dimension_that_would_be_sliced_wrongly() -> None:
    torch.manual_seed(0)
    model = _InterleavedNet().eval()
    space = derive_search_space(model)
    assert {d.name for d in space.dimensions} == {"stages.0.channels", "head.hidden"}
    inputs = {"image": torch.randn(2, 3, 8, 8), "condition": torch.randn(2, 4)}
    verified, left_out = verify_space(model, space, inputs)
    assert [d.name for d in verified.dimensions] == ["head.hidden"]
    assert "stages.0.channels" in left_out and "differs" in left_out["stages.0.channels"]


def test_slicing_keeps_the_most_important_neurons_and_blocks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[1::2] = 0.0  # odd neurons are dead
        model[0].bias[1::2] = 0.0
    space = derive_search_space(model)
    sliced = slice_architecture(model, space, {"hidden": 4})
    x = torch.randn(5, 6)
    assert sliced[0].out_features == 4 and torch.allclose(sliced(x), model(x), atol=1e-6)
    assert kept_blocks(6, 3) == [0, 2, 5] and kept_blocks(6, 1) == [5]
    assert kept_blocks(4, 2, [0.1, 0.9, 0.2, 0.8]) == [1, 3]
    with pytest.raises(ValidationError, match="off the search grid"):
        slice_architecture(model, space, {"hidden": 5})
    with pytest.raises(ValidationError, match="unknown search dimensions"):
        slice_architecture(model, space, {"depth": 1})


def _non_dominated(entries: list[dict], objectives: list[str]) -> bool:
    key = {"latency": "relative_latency", "fidelity": "fidelity", "params": "params"}
    directions = [DIRECTIONS[o] for o in objectives]
    values = [[entry[key[o]] for o in objectives] for entry in entries]
    return not any(dominates(a, b, directions) for a in values for b in values if a is not b)


def test_search_on_the_reference_vla_stores_a_smaller_faster_faithful_pareto_pick(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    original = store_reference(version_store, "vla", reference_cache, data_dir)
    calibration = reaching_calibration(8, 16, with_labels=True)
    config = ArchitectureSearchConfig(
        n_trials=6, distill_steps=15, final_distill_steps=20, min_fidelity=0.85, latency_runs=15, seed=0
    )
    seen: list[float] = []
    result = apply(
        version_store,
        original.job_id,
        original.id,
        config,
        data_dir=data_dir,
        calibration=calibration,
        progress=lambda percent, message: seen.append(percent),
    )
    facts = result.facts
    assert {0, 25, 50, 75, 100} <= set(seen) and seen == sorted(seen)
    assert facts["trials_run"] == 6 and facts["stopped_by"] == "trials"
    pareto = facts["pareto"]
    assert pareto and _non_dominated(pareto, facts["objectives"])
    trials = facts["trials"]
    for entry in trials:  # every evaluated candidate outside the front is dominated by a front member
        if entry["trial"] not in {p["trial"] for p in pareto}:
            assert not _non_dominated(pareto + [entry], facts["objectives"])
    assert facts["picked"]["trial"] in {p["trial"] for p in pareto}
    assert facts["picked"]["fidelity"] >= config.min_fidelity
    assert facts["final_distillation"]["steps_run"] == 20
    assert facts["fidelity_cosine"] == facts["final_distillation"]["after"]["fidelity_cosine"]

    source = load(version_store, original, data_dir).module
    picked = load(version_store, result.version, data_dir).module
    assert _params(picked) == facts["params"] < _params(source)
    held = calibration.split()[1]
    with torch.no_grad():
        cosine, _ = fidelity([source(**b) for b in held.batches], [picked(**b) for b in held.batches])
    assert cosine == pytest.approx(facts["fidelity_cosine"], abs=1e-6) and cosine >= config.min_fidelity
    sample = {k: v[:1] for k, v in held.batches[0].items()}
    source_ms, picked_ms = compare_latency(source, picked, sample, runs=60)
    assert picked_ms < source_ms, (picked_ms, source_ms, facts["architecture"])


def test_search_is_seeded_and_respects_its_time_budget(reference_cache: Path) -> None:
    from tools.reference import load_reference_module

    model = load_reference_module(build_reference("vla", reference_cache))
    data = reaching_calibration(4, 8, with_labels=False)

    def architectures(seed: int) -> list[dict[str, int]]:
        config = ArchitectureSearchConfig(
            n_trials=6,
            distill_steps=0,
            final_distill_steps=0,
            objectives=("params", "fidelity"),
            population_size=3,
            min_fidelity=0.01,
            latency_runs=3,
            seed=seed,
        )
        return [c.architecture for c in search_architectures(model, data, config).candidates]

    first = architectures(seed=7)
    assert len(first) >= 5 and first == architectures(seed=7)
    assert first != architectures(seed=8)

    start = time.perf_counter()
    config = ArchitectureSearchConfig(n_trials=50, distill_steps=200, time_budget_s=1.0, min_fidelity=0.01)
    result = search_architectures(model, data, config)
    assert result.stopped_by == "time" and result.trials_run < 50
    assert time.perf_counter() - start < 15.0


@pytest.mark.parametrize(
    "bad",
    [
        {"n_trials": 0},
        {"time_budget_s": 0},
        {"objectives": ("latency", "params")},
        {"objectives": ("fidelity", "fidelity")},
        {"objectives": ("fidelity",)},
        {"pick": "random"},
        {"min_fidelity": 0},
        {"keep_fractions": (0.5, 1.5)},
        {"population_size": 1},
        {"unknown": True},
    ],
)
def test_search_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        ArchitectureSearchConfig(**bad)


@pytest.mark.parametrize(
    "config",
    [
        ArchitectureSearchConfig(),
        ArchitectureSearchConfig(
            n_trials=4,
            objectives=("latency", "fidelity", "params"),
            pick="knee",
            protected=("action_head",),
            keep_fractions=(0.5, 1.0),
            population_size=4,
            seed=2,
        ),
    ],
)
def test_search_config_round_trips_through_json(config: ArchitectureSearchConfig) -> None:
    assert ArchitectureSearchConfig.model_validate_json(config.model_dump_json()) == config


def test_search_refuses_onnx_unknown_protected_modules_and_unreachable_floors(
    version_store: VersionStore, reference_cache: Path, data_dir: Path
) -> None:
    calibration = reaching_calibration(4, 4)
    onnx = store_vla_onnx(version_store, reference_cache, data_dir)
    with pytest.raises(OptimizationError, match="eager PyTorch"):
        apply(
            version_store,
            onnx.job_id,
            onnx.id,
            ArchitectureSearchConfig(),
            data_dir=data_dir,
            calibration=calibration,
        )
    original = store_reference(version_store, "vla", reference_cache, data_dir)
    with pytest.raises(ValidationError, match="protected modules not found.*nope"):
        apply(
            version_store,
            original.job_id,
            original.id,
            ArchitectureSearchConfig(protected=("nope",)),
            data_dir=data_dir,
            calibration=calibration,
        )
    with pytest.raises(OptimizationError, match="no candidate reached fidelity 1.0"):
        apply(
            version_store,
            original.job_id,
            original.id,
            ArchitectureSearchConfig(
                n_trials=2, distill_steps=0, final_distill_steps=0, min_fidelity=1.0, latency_runs=3
            ),
            data_dir=data_dir,
            calibration=calibration,
        )
    assert len(version_store.list(original.job_id)) == 1


def _candidate(trial: int, relative_latency: float, fidelity_: float, params: int = 100) -> Candidate:
    return Candidate(trial, {}, params, relative_latency, relative_latency, fidelity_, 0.0, None, 0)


def test_pareto_front_and_pick_rules() -> None:
    objectives = ("latency", "fidelity")
    fast, balanced, faithful = _candidate(0, 0.3, 0.90), _candidate(1, 0.5, 0.97), _candidate(2, 0.9, 0.99)
    dominated = _candidate(3, 0.6, 0.95)
    front = pareto_front([fast, balanced, faithful, dominated], objectives)
    assert front == [fast, balanced, faithful]
    assert pick_candidate(front, "fastest_within_fidelity", 0.95, objectives) is balanced
    assert pick_candidate(front, "fastest_within_fidelity", 0.85, objectives) is fast
    assert pick_candidate(front, "best_fidelity", 0.85, objectives) is faithful
    assert pick_candidate(front, "knee", 0.85, objectives) is balanced
    with pytest.raises(
        OptimizationError, match="no candidate reached fidelity 0.995; the best reached 0.9900"
    ):
        pick_candidate(front, "knee", 0.995, objectives)


def test_hugging_face_vlas_get_verified_spaces(reference_cache: Path, data_dir: Path) -> None:
    """SigLIP attention (out_proj) is searched; LLaVA's vision depth is left out because LLaVA reads a
    fixed layer index of the vision tower, which verification catches instead of slicing it wrongly."""
    from tools.intake import load_model
    from tools.reference import reference_model_file

    path, options = reference_model_file("hf_llava_siglip", reference_cache)
    loaded = load_model(path, options, data_dir)
    model, inputs = loaded.module.eval(), loaded.example_inputs(0)
    space = derive_search_space(model)
    verified, left_out = verify_space(model, space, inputs, block_importance(model, space, inputs))
    names = {d.name for d in verified.dimensions}
    assert {"model.vision_tower.encoder.layers.heads", "model.language_model.layers.depth"} <= names
    assert "model.vision_tower.encoder.layers.depth" in left_out
    smallest = slice_architecture(model, verified, {d.name: d.choices[0] for d in verified.dimensions})
    with torch.no_grad():
        assert smallest(**inputs).logits.shape == model(**inputs).logits.shape
    assert _params(smallest) < _params(model)
