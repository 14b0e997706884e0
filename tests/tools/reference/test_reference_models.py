"""TinyVLA and ConvPolicy: configs round-trip through JSON, components are named, training is deterministic."""

from __future__ import annotations

import json

import pydantic
import pytest
import torch

from tools.inputs import synthesize_inputs
from tools.reference.conv_policy import ConvPolicy, ConvPolicyConfig
from tools.reference.reaching import VOCABULARY
from tools.reference.training import TrainingConfig, deterministic, train_behaviour_cloning
from tools.reference.vla import TinyVLA, TinyVLAConfig


def test_tiny_vla_reference_shape_and_components() -> None:
    model = TinyVLA().eval()
    parameters = sum(p.numel() for p in model.parameters())
    assert 5_000_000 <= parameters <= 20_000_000
    children = dict(model.named_children())
    assert {"vision_tower", "language_backbone", "proprio_encoder", "blocks", "action_head"} <= set(children)
    attention = model.blocks[0].attn
    assert all(
        isinstance(getattr(attention, n), torch.nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    specs = {spec.name: spec for spec in TinyVLA.input_specs()}
    assert specs["pixel_values"].shape == (1, 3, 64, 64) and specs["pixel_values"].dtype == "float32"
    assert (specs["input_ids"].dtype, specs["input_ids"].low, specs["input_ids"].high) == (
        "int64",
        0,
        len(VOCABULARY),
    )
    assert specs["proprio"].shape == (1, 2)
    inputs = {
        name: torch.cat([tensor] * 3) for name, tensor in synthesize_inputs(TinyVLA.input_specs()).items()
    }
    with torch.no_grad():
        keyword = model(**inputs)
        positional = model(inputs["pixel_values"], inputs["input_ids"], inputs["proprio"])
    assert keyword.shape == (3, 8, 2) and torch.equal(keyword, positional)


@pytest.mark.parametrize(
    ("cls", "config_cls", "overrides"),
    [
        (TinyVLA, TinyVLAConfig, {"hidden_size": 64, "trunk_layers": 1}),
        (ConvPolicy, ConvPolicyConfig, {"channels": [8, 16]}),
    ],
)
def test_config_round_trips_through_json(cls: type, config_cls: type, overrides: dict) -> None:
    model = cls(**overrides)
    text = json.dumps(model.config.model_dump(mode="json"))
    rebuilt = cls(**json.loads(text))
    assert rebuilt.config == model.config == config_cls.model_validate_json(text)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_invalid_configs_are_rejected_with_the_bad_value() -> None:
    with pytest.raises(pydantic.ValidationError, match="num_heads"):
        TinyVLAConfig(hidden_size=130, num_heads=4)
    with pytest.raises(pydantic.ValidationError, match="image_size"):
        ConvPolicyConfig(image_size=60)
    with pytest.raises(pydantic.ValidationError):
        TinyVLA(unknown_field=1)


def test_conv_policy_components_and_specs() -> None:
    model = ConvPolicy().eval()
    assert isinstance(model.backbone, torch.nn.Sequential) and isinstance(
        model.backbone[1], torch.nn.BatchNorm2d
    )
    assert [spec.name for spec in ConvPolicy.input_specs()] == ["pixel_values", "proprio"]
    with torch.no_grad():
        actions = model(**synthesize_inputs(ConvPolicy.input_specs()))
    assert actions.shape == (1, 8, 2)


def test_training_is_deterministic_for_a_seed() -> None:
    def train(seed: int) -> dict[str, torch.Tensor]:
        config = TrainingConfig(steps=3, batch_size=8, seed=seed)
        with deterministic(config.seed, config.threads):
            model = TinyVLA(hidden_size=32, head_hidden_size=64, trunk_layers=1, stem_channels=(8, 8, 8, 8))
            train_behaviour_cloning(model, config)
        return model.state_dict()

    first, second, other = train(0), train(0), train(1)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_every_trained_reference_names_a_registered_simulator_of_its_task() -> None:
    """The simulator a reference lists (GET /references, the chat page) resolves, and is the one of its task."""
    from tools.evaluation.simulators import SIMULATORS
    from tools.reference import REFERENCE_MODELS
    from tools.reference.reproducible import TRAINED_REFERENCES

    for name in TRAINED_REFERENCES:
        assert REFERENCE_MODELS[name].simulator in SIMULATORS, name
    assert REFERENCE_MODELS["conv_policy"].simulator == "reaching:single_target"  # not the VLA's task
    assert all(entry.simulator is None for entry in REFERENCE_MODELS.values() if entry.kind != "torch_policy")
