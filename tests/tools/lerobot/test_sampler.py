"""The numpy DDPM/DDIM steps are diffusers' steps: same timesteps, same samples, same noise consumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.errors import ValidationError
from tools.lerobot.sampler import SamplerSchedule, ddim_step, ddpm_step


def _schedule(scheduler: object, kind: str, steps: int) -> SamplerSchedule:
    settings = scheduler.config
    return SamplerSchedule(
        kind=kind,
        num_train_timesteps=settings.num_train_timesteps,
        alphas_cumprod=[float(v) for v in scheduler.alphas_cumprod],
        final_alpha_cumprod=float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))),
        timestep_spacing=settings.timestep_spacing,
        steps_offset=settings.steps_offset,
        prediction_type=settings.prediction_type,
        clip_sample=settings.clip_sample,
        clip_sample_range=settings.clip_sample_range,
        num_inference_steps=steps,
        horizon=4,
        action_dim=2,
        n_obs_steps=1,
        n_action_steps=4,
        action_scale=[1.0, 1.0],
        action_offset=[0.0, 0.0],
        input_names=["observation_state"],
    )


@pytest.mark.parametrize("kind", ["DDPM", "DDIM"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_numpy_steps_match_diffusers(kind: str, prediction: str) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDPMScheduler if kind == "DDPM" else DDIMScheduler
    scheduler = cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    steps = 7
    scheduler.set_timesteps(steps)
    schedule = _schedule(scheduler, kind, steps)
    np.testing.assert_array_equal(schedule.timesteps(steps), scheduler.timesteps.numpy())
    alphas = np.asarray(schedule.alphas_cumprod, dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((3, 4, 2), generator=generator)
    ours = sample.numpy().copy()
    timesteps = schedule.timesteps(steps)
    for index, t in enumerate(int(v) for v in timesteps):
        output = torch.randn((3, 4, 2), generator=generator) * 2
        torch.manual_seed(index)
        sample = scheduler.step(output, t, sample).prev_sample
        if kind == "DDIM":
            ours = ddim_step(schedule, alphas, output.numpy(), t, steps, ours)
        else:
            torch.manual_seed(index)
            noise = torch.randn((3, 4, 2)).numpy() if t > 0 else None
            prev = int(timesteps[index + 1]) if index + 1 < len(timesteps) else -1
            ours = ddpm_step(schedule, alphas, output.numpy(), t, prev, ours, noise)
    np.testing.assert_allclose(ours, sample.numpy(), atol=1e-5)
    assert schedule.noise_steps(steps) == (steps - int((timesteps == 0).sum()) if kind == "DDPM" else 0)


def test_step_counts_beyond_training_are_refused() -> None:
    from diffusers import DDPMScheduler

    schedule = _schedule(DDPMScheduler(num_train_timesteps=10), "DDPM", 5)
    with pytest.raises(ValidationError, match="between 1 and 10"):
        schedule.timesteps(11)
