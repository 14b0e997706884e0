"""Per-layer sensitivity: a layer made fragile to quantization (same function, one outlier column) rises
above every transformer layer, pruning what is already dead costs nothing, the analysis leaves the model bit-identical, and it is
deterministic and JSON-serializable."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from tools.errors import ValidationError
from tools.evaluation.sensitivity import (
    LayerSensitivity,
    fake_quantize,
    pruning_sensitivity,
    quantization_sensitivity,
    zero_weakest_channels,
)
from tools.reference import load_reference_module
from tools.reference.calibration import reaching_calibration
from tools.reference.vla import TinyVLA

pytestmark = pytest.mark.integration

FRAGILE = "blocks.1.attn.o_proj"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def vla(built_vla: Path) -> TinyVLA:
    return load_reference_module(built_vla)


@pytest.fixture(scope="module")
def inputs() -> list[dict[str, torch.Tensor]]:
    return reaching_calibration(2, 16, seed=31).batches


def _outputs(module: nn.Module, inputs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [module(**batch) for batch in inputs]


def _make_fragile(vla: TinyVLA, factor: float = 1000.0) -> None:
    """Scale one value channel down and the matching o_proj column up: the same function, one dominant column.

    Attention is linear in v, so the model computes the same actions, but each row of o_proj's per-channel
    4-bit grid is now set by the outlier and every other weight of the row rounds to zero.
    """
    attention = vla.blocks[1].attn
    with torch.no_grad():
        attention.v_proj.weight[5] /= factor
        attention.v_proj.bias[5] /= factor
        attention.o_proj.weight[:, 5] *= factor


def test_fake_quantize_is_a_per_channel_symmetric_grid() -> None:
    weight = torch.tensor([[1.0, -0.45, 0.26, 0.0], [10.0, 3.0, -10.0, 0.4]])
    quantized = fake_quantize(weight, bits=4)  # 7 levels a side: steps of 1/7 and 10/7
    torch.testing.assert_close(quantized[0], torch.tensor([1.0, -3 / 7, 2 / 7, 0.0]))
    torch.testing.assert_close(quantized[1], torch.tensor([10.0, 20 / 7, -10.0, 0.0]))
    assert torch.equal(fake_quantize(torch.zeros(2, 3), 8), torch.zeros(2, 3))


def test_a_layer_made_fragile_rises_above_every_transformer_layer_at_4_bits(
    vla: TinyVLA, inputs: list
) -> None:
    before = quantization_sensitivity(vla, inputs, bits=4)
    assert {item.name for item in before} >= {FRAGILE, "action_head.mlp.0", "vision_tower.stem.0.conv"}
    reference = _outputs(vla, inputs)
    _make_fragile(vla)
    for old, new in zip(reference, _outputs(vla, inputs)):
        torch.testing.assert_close(new, old, rtol=1e-3, atol=1e-5)  # still the same policy
    after = quantization_sensitivity(vla, inputs, bits=4)
    names_before, names_after = [item.name for item in before], [item.name for item in after]
    scores_before = {item.name: item.score for item in before}
    fragile = after[names_after.index(FRAGILE)]
    assert (
        fragile.analysis == "quantization" and fragile.params == 128 * 128 and fragile.layer_type == "Linear"
    )
    # Measured against the same model, whatever its trained weights: the outlier raises this layer's 4-bit error
    # many times over (0.0027 -> 0.36 on the shipped VLA), lifts it above every Linear of the transformer blocks,
    # and leaves every other layer's score as it was (the function did not change).
    assert fragile.score > 20 * scores_before[FRAGILE]
    assert names_after.index(FRAGILE) < names_before.index(FRAGILE)
    transformer = [
        name for name in names_after if name.startswith(("blocks.", "language_backbone.")) and name != FRAGILE
    ]
    assert transformer and all(names_after.index(FRAGILE) < names_after.index(name) for name in transformer)
    for item in after:
        if item.name != FRAGILE:
            assert item.score == pytest.approx(scores_before[item.name], rel=0.05, abs=1e-6), item.name
    # the layers still ranked above it are exactly those whose own 4-bit error was already larger
    assert all(scores_before[name] >= fragile.score for name in names_after[: names_after.index(FRAGILE)])
    assert [item.score for item in after] == sorted((item.score for item in after), reverse=True)
    eight_bit = {item.name: item.score for item in quantization_sensitivity(vla, inputs, bits=8)}
    assert eight_bit[FRAGILE] < fragile.score  # finer grids hurt less


def test_analysis_leaves_the_model_bit_identical(vla: TinyVLA, inputs: list) -> None:
    vla.train()  # batch norm would update its running statistics if the analysis ran it in train mode
    state = {name: tensor.clone() for name, tensor in vla.state_dict().items()}
    quantization_sensitivity(vla, inputs, bits=4)
    pruning_sensitivity(vla, inputs, ratio=0.5)
    pruning_sensitivity(vla, inputs, mode="drop")
    assert vla.training
    after = vla.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in state.items())
    assert isinstance(vla.blocks[0], type(vla.blocks[1])) and type(vla.blocks[0]).__name__ == "Block"


def test_analysis_is_deterministic_and_serializable(vla: TinyVLA, inputs: list) -> None:
    first = pruning_sensitivity(vla, inputs, ratio=0.3)
    assert first == pruning_sensitivity(vla, inputs, ratio=0.3)
    adapter = TypeAdapter(list[LayerSensitivity])
    assert adapter.validate_json(adapter.dump_json(first)) == first
    assert all(item.analysis == "pruning" and item.layers for item in first)
    units = {item.name: item for item in first}
    assert set(units["blocks.0"].layers) == {
        f"blocks.0.{layer}"
        for layer in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc1", "mlp.fc2")
    }


def test_pruning_what_is_already_dead_costs_nothing(vla: TinyVLA, inputs: list) -> None:
    hidden = vla.action_head.mlp[2]
    with torch.no_grad():
        weakest = hidden.weight.abs().sum(dim=1).argsort()[: hidden.out_features // 2]
        hidden.weight[weakest] = 0.0
        hidden.bias[weakest] = 0.0
        block = vla.blocks[1]
        for layer in (
            block.attn.o_proj,
            block.mlp.fc2,
        ):  # both residual branches output zero: an identity block
            layer.weight.zero_()
            layer.bias.zero_()
    layers = pruning_sensitivity(vla, inputs, ratio=0.5, granularity="layer")
    free = {item.name for item in layers if item.score == 0.0}
    assert free == {"action_head.mlp.2"} | {
        name for name, _ in block.named_modules(prefix="blocks.1") if "_proj" in name or ".fc" in name
    }
    assert all(item.score > 0 for item in layers if item.name not in free)
    # Half of the action outputs themselves: the score is the actions' own relative error with those rows zeroed
    # (computed here by hand on the same inputs), whatever the trained weights make it.
    head = vla.action_head.mlp[6]
    reference = torch.cat([out.flatten(1) for out in _outputs(vla, inputs)])
    with torch.no_grad():
        saved = head.weight.clone()
        head.weight.copy_(zero_weakest_channels(saved, 0.5))
        pruned = torch.cat([out.flatten(1) for out in _outputs(vla, inputs)])
        head.weight.copy_(saved)
    by_hand = float((pruned - reference).norm() / reference.norm())
    scores = {item.name: item.score for item in layers}
    assert scores["action_head.mlp.6"] == pytest.approx(by_hand, rel=1e-3) and by_hand > 0.05
    dropped = {item.name: item.score for item in pruning_sensitivity(vla, inputs, mode="drop")}
    assert dropped["blocks.1"] == 0.0 < dropped["blocks.0"]
    assert not any(name.startswith("vision_tower.stem") for name in dropped)  # shape-changing: not droppable


def test_refuses_bad_settings(vla: TinyVLA, inputs: list) -> None:
    with pytest.raises(ValidationError, match="bits"):
        quantization_sensitivity(vla, inputs, bits=1)
    with pytest.raises(ValidationError, match="ratio"):
        pruning_sensitivity(vla, inputs, ratio=1.0)
    with pytest.raises(ValidationError, match="metric"):
        quantization_sensitivity(vla, inputs, metric="psnr")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="no layers"):
        quantization_sensitivity(nn.Sequential(nn.ReLU()), {"input": torch.zeros(1, 2)})
    with pytest.raises(ValidationError, match="no inputs"):
        quantization_sensitivity(vla, [])


def test_max_layers_ranks_the_largest_layers_only(vla: TinyVLA, inputs: list) -> None:
    from tools.evaluation.sensitivity import count_weighted_layers

    total = count_weighted_layers(vla)
    sample = quantization_sensitivity(vla, inputs, bits=4, max_layers=5)
    assert len(sample) == 5 < total
    sizes = sorted(
        (
            module.weight.numel()
            for module in vla.modules()
            if getattr(module, "weight", None) is not None
            and module.weight.ndim >= 2
            and isinstance(module, (nn.Linear, nn.Conv2d))
        ),
        reverse=True,
    )
    assert sorted((item.params for item in sample), reverse=True) == sizes[:5]
    full = {item.name: item.score for item in quantization_sensitivity(vla, inputs, bits=4)}
    assert all(
        item.score == pytest.approx(full[item.name]) for item in sample
    )  # the same figures, fewer of them
    pruned = pruning_sensitivity(vla, inputs, ratio=0.5, granularity="layer", max_layers=3)
    assert len(pruned) == 3
    with pytest.raises(ValidationError, match="max_layers"):
        quantization_sensitivity(vla, inputs, max_layers=0)


class _SlowWide(nn.Module):
    """Sixty layers and a forward pass of at least 0.5 s: a full ranking would take over a minute."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(60))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.5)
        for layer in self.layers:
            x = layer(x)
        return x


def test_the_analysis_samples_the_ranking_of_a_slow_model_and_says_so() -> None:
    from graph.work import SENSITIVITY_BUDGET_S, sensitivity_layer_budget

    notes: list[str] = []
    limit = sensitivity_layer_budget(_SlowWide(), [{"x": torch.randn(2, 4)}], notes)
    assert limit is not None and 8 <= limit <= SENSITIVITY_BUDGET_S / 0.5 < 60
    assert notes and f"the {limit} largest of 60 layers" in notes[0]
    fast: list[str] = []
    assert (
        sensitivity_layer_budget(nn.Sequential(nn.Linear(4, 4)), [{"input": torch.randn(2, 4)}], fast) is None
    )
    assert not fast


class _SlowPass(nn.Module):
    """Twelve layers and a forward pass of 3 s: not even the minimum of eight layers fits the budget."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(3.0)
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_model_too_slow_for_the_minimum_ranking_is_not_ranked_and_says_so() -> None:
    from graph.work import SENSITIVITY_BUDGET_S, SENSITIVITY_MIN_LAYERS, sensitivity_layer_budget

    assert 3.0 * SENSITIVITY_MIN_LAYERS > SENSITIVITY_BUDGET_S, "the model must be too slow for this test"
    notes: list[str] = []
    assert sensitivity_layer_budget(_SlowPass(), [{"x": torch.randn(2, 4)}], notes) == 0
    assert notes and "not ranked" in notes[0] and "a pass takes 3.0 s" in notes[0]


class _Counted(nn.Module):
    """Counts its forward calls: the analysis must not run a model whose measured call rules ranking out."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(12))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_measured_slow_call_skips_the_ranking_without_running_the_model() -> None:
    from graph.work import SENSITIVITY_BUDGET_S, SENSITIVITY_MIN_LAYERS, sensitivity_layer_budget

    slow_ms = (
        1000 * SENSITIVITY_BUDGET_S / SENSITIVITY_MIN_LAYERS + 1
    )  # one call per batch is already too long
    model, notes = _Counted(), []
    assert sensitivity_layer_budget(model, [{"x": torch.randn(2, 4)}], notes, call_ms=slow_ms) == 0
    assert model.calls == 0 and notes and "the baseline's p50" in notes[0]
    # a fast measured call times the pass as before (and every layer fits)
    fast: list[str] = []
    assert sensitivity_layer_budget(model, [{"x": torch.randn(2, 4)}], fast, call_ms=0.05) is None
    assert model.calls == 1 and not fast
