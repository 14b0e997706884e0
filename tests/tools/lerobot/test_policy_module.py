"""LeRobotPolicyModule computes what LeRobot's own pipeline computes: raw observations to unnormalized actions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tools.errors import MissingDependencyError, UnsupportedFormatError

pytestmark = pytest.mark.integration


def _load(directory: Path) -> tuple[torch.nn.Module, object, object, object]:
    from tools.lerobot.imports import load_policy
    from tools.lerobot.policy_module import LeRobotPolicyModule, load_processors

    policy = load_policy(directory)
    pre, post = load_processors(directory)
    untouched = load_policy(directory)  # LeRobot's own policy, unwrapped
    return LeRobotPolicyModule(policy, pre, post), untouched, pre, post


def _raw_observations(module: torch.nn.Module, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator) for shape in module.input_shapes(batch).values()]


def _lerobot_actions(policy_type: str, policy: object, pre: object, post: object, raw: dict) -> torch.Tensor:
    """Actions by LeRobot's own path: preprocessor, the policy's chunk prediction, postprocessor."""
    batch = pre(dict(raw))
    if policy_type == "act":
        return post(policy.predict_action_chunk(batch))
    batch["observation.images"] = torch.stack([batch["observation.images.top"]], dim=-4)
    torch.manual_seed(0)
    if policy_type == "diffusion":
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn((1, policy.config.horizon, 6), generator=generator).expand(2, -1, -1)
        return post(policy.diffusion.generate_actions(batch, noise=noise))
    return post(policy.vqbet(batch, rollout=True)[:, : policy.config.action_chunk_size])


@pytest.mark.parametrize("policy_type", ["act", "diffusion", "vqbet"])
def test_module_matches_lerobot_pipeline(lerobot_zoo: dict[str, Path], policy_type: str) -> None:
    module, policy, pre, post = _load(lerobot_zoo[policy_type])
    observations = _raw_observations(module)
    raw = dict(zip(module.feature_keys, observations))
    with torch.no_grad():
        ours = module(*observations)
        again = module(*observations)
        theirs = _lerobot_actions(policy_type, policy, pre, post, raw)
    facts = module.policy_facts()
    assert ours.shape == (2, facts["chunk_size"], facts["action_dim"])
    assert torch.equal(ours, again), "the module must be deterministic"
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    if policy_type == "act":  # the folded unnormalization really moved the actions off the model's scale
        normalized = pre(dict(raw))
        normalized["observation.images"] = [normalized["observation.images.top"]]
        assert not torch.allclose(module.policy.model(normalized)[0], ours, atol=1e-2)


def test_module_trains_through_normalization(lerobot_act_dir: Path) -> None:
    module, *_ = _load(lerobot_act_dir)
    module.train()
    loss = module(*_raw_observations(module)).pow(2).mean()
    loss.backward()
    model = module.policy.model
    assert not module.policy.training, "the policy stays on its inference path"
    for layer in (model.action_head, model.backbone.conv1, model.encoder_img_feat_input_proj):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_unsupported_policy_type_lists_supported() -> None:
    from tools.lerobot.imports import import_policy_class

    with pytest.raises(UnsupportedFormatError) as info:
        import_policy_class("pi0")
    assert "transformers" in info.value.message and "act" in (info.value.hint or "")
    with pytest.raises(UnsupportedFormatError, match="unknown LeRobot policy type 'nope'"):
        import_policy_class("nope")


def test_missing_lerobot_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.lerobot import imports

    monkeypatch.setitem(sys.modules, "lerobot", None)  # how Python marks a package as absent
    with pytest.raises(MissingDependencyError) as info:
        imports.import_lerobot_module("lerobot.policies.act.modeling_act")
    assert "run_robopt.py" in (info.value.hint or "")
