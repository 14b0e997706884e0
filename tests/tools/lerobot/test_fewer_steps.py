"""lerobot_fewer_steps switches a Diffusion Policy's exported sampler to DDIM at fewer denoising steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

FULL_STEPS = 10  # the zoo's DDPM policy samples in 10 steps (100 training timesteps)


def test_config_round_trips_through_json_and_refuses_bad_steps() -> None:
    from tools.errors import ValidationError
    from tools.lerobot.techniques import DiffusionFewerStepsConfig
    from tools.techniques.registry import get_technique, parse_config

    config = parse_config({"type": "lerobot_fewer_steps", "num_inference_steps": 20})
    assert isinstance(config, DiffusionFewerStepsConfig) and config.scheduler == "DDIM"
    assert parse_config(config.model_dump_json()) == config
    assert DiffusionFewerStepsConfig().num_inference_steps == 10
    for bad in ({"num_inference_steps": 0}, {"num_inference_steps": 1001}, {"scheduler": "DDPM"}):
        with pytest.raises(ValidationError, match="invalid lerobot_fewer_steps"):
            parse_config({"type": "lerobot_fewer_steps", **bad})
    entry = get_technique("lerobot_fewer_steps")
    schema = entry.config_type.model_json_schema()["properties"]["num_inference_steps"]
    assert schema["search"] == [50, 20, 10]
    assert entry.spec.output_format == "lerobot_sampler" and "lerobot_policy" in entry.spec.input_formats


class _CountingRunner:
    """A `DiffusionOnnxRunner` that counts its denoiser calls (subclassed at first use, ONNX Runtime needed)."""

    @staticmethod
    def open(directory: Path) -> Any:
        from tools.lerobot.sampler import DiffusionOnnxRunner

        class Counting(DiffusionOnnxRunner):
            calls = 0

            def denoise(self, sample: np.ndarray, t: int, condition: np.ndarray) -> np.ndarray:
                self.calls += 1
                return super().denoise(sample, t, condition)

        return Counting(directory)


@pytest.fixture(scope="module")
def versions(lerobot_diffusion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DDPM policy stored as a job's original, its full-step sampler export and its 4-step DDIM version."""
    from tools.lerobot.techniques import DiffusionFewerStepsConfig, LeRobotSamplerExportConfig
    from tools.techniques import apply, store_original
    from tools.versions import VersionStore

    root = tmp_path_factory.mktemp("fewer_steps")
    data = root / "data"
    store = VersionStore(root / "store")
    original = store_original(store, "job", lerobot_diffusion_dir, None, data)
    full = apply(store, "job", original.id, LeRobotSamplerExportConfig(), data_dir=data)
    fewer = apply(store, "job", original.id, DiffusionFewerStepsConfig(num_inference_steps=4), data_dir=data)
    return {"store": store, "data": data, "original": original, "full": full, "fewer": fewer}


@pytest.mark.integration
def test_fewer_steps_stores_a_ddim_runner_that_calls_the_denoiser_fewer_times(
    versions: dict[str, Any],
) -> None:
    from tools.intake import load_model

    store, fewer, full = versions["store"], versions["fewer"], versions["full"]
    assert fewer.version.format == "lerobot_sampler" and fewer.version.technique == "lerobot_fewer_steps"
    assert fewer.facts["source_scheduler"] == "DDPM" and fewer.facts["scheduler"] == "DDIM"
    assert fewer.facts["num_inference_steps"] == 4 and fewer.facts["source_num_inference_steps"] == FULL_STEPS
    fewer_dir, full_dir = (store.artifact_path("job", v.version.id) for v in (fewer, full))
    schedule = json.loads((fewer_dir / "sampler.json").read_text())
    assert (schedule["kind"], schedule["num_inference_steps"]) == ("DDIM", 4)

    loaded = load_model(fewer_dir, data_dir=versions["data"])
    generator = torch.Generator().manual_seed(7)
    feeds = {s.name: torch.rand((2, *s.shape[1:]), generator=generator) for s in loaded.input_specs}
    arrays = {name: value.numpy() for name, value in feeds.items()}
    counts = {}
    for name, directory in (("fewer", fewer_dir), ("full", full_dir)):
        runner = _CountingRunner.open(directory)
        actions = runner(arrays)
        assert np.isfinite(actions).all() and actions.shape[0] == 2
        counts[name] = runner.calls
    assert counts == {"fewer": 4, "full": FULL_STEPS}  # the denoiser is the loop's cost: 2.5x fewer calls
    with torch.inference_mode():
        assert torch.isfinite(loaded.module(**feeds)).all()


@pytest.mark.integration
def test_at_the_training_steps_the_runner_gives_lerobots_own_ddim_actions(
    versions: dict[str, Any], lerobot_diffusion_dir: Path, lerobot_diffusion_ddim_dir: Path
) -> None:
    """From the sampler version, 100 DDIM steps (the training timesteps) reproduce LeRobot's DDIM sampling of the
    same weights: the runner's float32 DDIM against diffusers' within 1e-3 of the action scale, actions finite and
    inside the range the unnormalization allows (DDIM's last step returns the clipped sample)."""
    from tools.lerobot.diffusion_export import inference_steps, runner_inputs
    from tools.lerobot.export import load_policy_module
    from tools.lerobot.techniques import DiffusionFewerStepsConfig
    from tools.techniques import apply

    store, data = versions["store"], versions["data"]
    config = DiffusionFewerStepsConfig(num_inference_steps=100)
    applied = apply(store, "job", versions["full"].version.id, config, data_dir=data)
    assert applied.facts["source_scheduler"] == "DDPM" and applied.facts["num_train_timesteps"] == 100

    ddim = load_policy_module(lerobot_diffusion_ddim_dir, seed=3)
    ddpm = load_policy_module(lerobot_diffusion_dir, seed=3)
    for key, value in ddpm.state_dict().items():  # same seed, same weights: only the scheduler differs
        assert torch.equal(value, ddim.state_dict()[key]), key

    runner = _CountingRunner.open(store.artifact_path("job", applied.version.id))
    generator = torch.Generator().manual_seed(11)
    raw = {n: torch.rand(s, generator=generator) for n, s in ddim.input_shapes(2).items()}
    noise, _ = runner_inputs(ddim, runner.schedule, 2, 100)
    actions = runner({n: v.numpy() for n, v in raw.items()}, noise=noise)
    with torch.inference_mode(), inference_steps(ddim, 100):
        expected = ddim(*raw.values()).numpy()
    assert runner.calls == 100 and np.isfinite(actions).all()
    scale, offset = np.asarray(runner.schedule.action_scale), np.asarray(runner.schedule.action_offset)
    assert (np.abs(actions - offset) <= np.abs(scale) * runner.schedule.clip_sample_range + 1e-5).all()
    assert np.abs(actions - expected).max() <= 1e-3 * max(float(np.abs(expected).max()), 1.0)


@pytest.mark.integration
def test_fewer_steps_refuses_act_steps_beyond_training_and_a_no_op(
    versions: dict[str, Any], lerobot_act_dir: Path, tmp_path: Path
) -> None:
    from tools.errors import NotApplicableError, ValidationError
    from tools.lerobot.techniques import DiffusionFewerStepsConfig
    from tools.techniques import apply, store_original

    store, data = versions["store"], versions["data"]
    act = store_original(store, "act-job", lerobot_act_dir, None, data)
    with pytest.raises(NotApplicableError, match="Diffusion Policies, not act"):
        apply(store, "act-job", act.id, DiffusionFewerStepsConfig(), data_dir=data)
    sampler = versions["full"].version.id
    with pytest.raises(ValidationError, match="exceeds the policy's 100 training timesteps"):
        apply(store, "job", sampler, DiffusionFewerStepsConfig(num_inference_steps=101), data_dir=data)
    with pytest.raises(NotApplicableError, match="already runs DDIM at 4 steps"):
        apply(
            store,
            "job",
            versions["fewer"].version.id,
            DiffusionFewerStepsConfig(num_inference_steps=4),
            data_dir=data,
        )


@pytest.mark.integration
def test_the_sampler_runner_honours_the_thread_count_it_is_given(versions: dict[str, Any]) -> None:
    """Latency measurement sets threads through `set_threads`: torch's count never reaches ONNX Runtime."""
    from tools.intake import load_model
    from tools.latency import _fix_module_threads

    directory = versions["store"].artifact_path("job", versions["full"].version.id)
    loaded = load_model(directory, data_dir=versions["data"])
    runner = loaded.module.runner
    assert runner.encoder.get_session_options().intra_op_num_threads == 1
    _fix_module_threads(loaded, 2)
    for session in (loaded.module.runner.encoder, loaded.module.runner.denoiser):
        assert session.get_session_options().intra_op_num_threads == 2
    generator = torch.Generator().manual_seed(3)
    feeds = {s.name: torch.rand((1, *s.shape[1:]), generator=generator) for s in loaded.input_specs}
    with torch.no_grad():
        assert torch.isfinite(loaded.module(**feeds)).all()  # the rebuilt runner still runs


@pytest.mark.integration
def test_a_source_too_slow_for_the_agreement_budget_is_compared_on_one_observation(
    versions: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's pace decides: within the budget both input batches are compared; a source of seconds a
    chunk (a zero budget here) is compared on one batch-1 observation, and the fact says how many."""
    import tools.lerobot.techniques as techniques
    from tools.lerobot.techniques import DiffusionFewerStepsConfig
    from tools.techniques import apply

    store, data, full = versions["store"], versions["data"], versions["full"]
    assert versions["fewer"].facts["agreement_with_source"]["observations"] > 1
    monkeypatch.setattr(techniques, "AGREEMENT_BUDGET_S", 0.0)
    applied = apply(
        store, "job", full.version.id, DiffusionFewerStepsConfig(num_inference_steps=2), data_dir=data
    )
    agreement = applied.facts["agreement_with_source"]
    assert agreement["observations"] == 1 and agreement["max_abs_error"] > 0 and agreement["cosine"] < 1
