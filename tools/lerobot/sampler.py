"""Diffusion Policy's denoising loop over exported ONNX networks, in numpy and ONNX Runtime only.

An exported Diffusion Policy is two graphs and one JSON file: `encoder.onnx` (raw observations -> global
conditioning, normalization included), `denoiser.onnx` (noisy sample, timestep, conditioning -> model output)
and `sampler.json` (`SamplerSchedule`: the scheduler's alphas and settings, the action unnormalization).
`DiffusionOnnxRunner` runs LeRobot's loop (diffusers' DDPM or DDIM `step`, reimplemented here in float32 numpy)
with the number of steps as a parameter and the initial noise (and DDPM's per-step noise) as explicit inputs,
so the same noise gives the torch policy's actions. The scheduler math stays float32 whatever precision the
graphs run in (an fp16 denoiser's output is cast up before the step), the fix for the dtype mismatches LeRobot
users hit when they cast the whole policy to fp16.

Nothing here imports torch: this module (with the three files) is what a robot needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import ValidationError

SAMPLER_FILE = "sampler.json"
ENCODER_ONNX = "encoder.onnx"
DENOISER_ONNX = "denoiser.onnx"

SchedulerKind = Literal["DDPM", "DDIM"]
_F32 = np.float32


class SamplerSchedule(BaseModel):
    """Everything the denoising loop needs besides the networks (read from LeRobot's diffusers scheduler)."""

    kind: SchedulerKind
    num_train_timesteps: int = Field(ge=1)
    alphas_cumprod: list[float] = Field(description="diffusers' float32 alphas_cumprod, one per train step.")
    final_alpha_cumprod: float = Field(default=1.0, description="DDIM's alpha before step 0.")
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading"
    steps_offset: int = 0
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int = Field(ge=1, description="LeRobot's configured number of denoising steps.")
    horizon: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    n_obs_steps: int = Field(ge=1)
    n_action_steps: int = Field(ge=1)
    action_scale: list[float] = Field(description="Unnormalization: action = x * scale + offset.")
    action_offset: list[float]
    input_names: list[str] = Field(description="Observation inputs of encoder.onnx, in order.")

    def timesteps(self, steps: int) -> np.ndarray:
        """diffusers' `set_timesteps(steps)` for this scheduler's spacing."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValidationError(
                f"num_inference_steps must be between 1 and {self.num_train_timesteps}, got {steps}"
            )
        total = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            return np.linspace(0, total - 1, steps).round()[::-1].copy().astype(np.int64)
        if self.timestep_spacing == "leading":
            ratio = total // steps
            return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + self.steps_offset
        return np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1

    def noise_steps(self, steps: int) -> int:
        """How many per-step noise draws the loop makes (DDPM: one per step with t > 0; DDIM with eta 0: none)."""
        return int((self.timesteps(steps) > 0).sum()) if self.kind == "DDPM" else 0

    def save(self, directory: Path) -> Path:
        """Write sampler.json into `directory`."""
        path = Path(directory) / SAMPLER_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def load(cls, directory: Path) -> "SamplerSchedule":
        """Read sampler.json from `directory`."""
        path = Path(directory) / SAMPLER_FILE
        if not path.is_file():
            raise ValidationError(
                f"{directory} has no {SAMPLER_FILE}; it is not an exported diffusion policy"
            )
        return cls.model_validate_json(path.read_text())


def ddpm_step(
    schedule: SamplerSchedule,
    alphas: np.ndarray,
    model_output: np.ndarray,
    t: int,
    prev_t: int,
    sample: np.ndarray,
    noise: np.ndarray | None,
) -> np.ndarray:
    """diffusers' DDPMScheduler.step (fixed_small variance, no thresholding) in float32."""
    alpha_t = alphas[t]
    alpha_prev = alphas[prev_t] if prev_t >= 0 else _F32(1.0)
    beta_t, beta_prev = _F32(1) - alpha_t, _F32(1) - alpha_prev
    current_alpha = alpha_t / alpha_prev
    current_beta = _F32(1) - current_alpha
    if schedule.prediction_type == "epsilon":
        original = (sample - beta_t ** _F32(0.5) * model_output) / alpha_t ** _F32(0.5)
    else:
        original = model_output
    if schedule.clip_sample:
        original = np.clip(original, -schedule.clip_sample_range, schedule.clip_sample_range).astype(_F32)
    original_coeff = (alpha_prev ** _F32(0.5) * current_beta) / beta_t
    sample_coeff = current_alpha ** _F32(0.5) * beta_prev / beta_t
    previous = original_coeff * original + sample_coeff * sample
    if t > 0:
        if noise is None:
            raise ValidationError("a DDPM step with t > 0 needs its noise")
        variance = max(beta_prev / beta_t * current_beta, _F32(1e-20))
        previous = previous + _F32(variance) ** _F32(0.5) * noise
    return previous.astype(_F32)


def ddim_step(
    schedule: SamplerSchedule,
    alphas: np.ndarray,
    model_output: np.ndarray,
    t: int,
    steps: int,
    sample: np.ndarray,
) -> np.ndarray:
    """diffusers' DDIMScheduler.step with eta 0 (LeRobot's call) in float32."""
    prev_t = t - schedule.num_train_timesteps // steps
    alpha_t = alphas[t]
    alpha_prev = alphas[prev_t] if prev_t >= 0 else _F32(schedule.final_alpha_cumprod)
    beta_t = _F32(1) - alpha_t
    if schedule.prediction_type == "epsilon":
        original = (sample - beta_t ** _F32(0.5) * model_output) / alpha_t ** _F32(0.5)
        epsilon = model_output
    else:
        original = model_output
        epsilon = (sample - alpha_t ** _F32(0.5) * original) / beta_t ** _F32(0.5)
    if schedule.clip_sample:
        original = np.clip(original, -schedule.clip_sample_range, schedule.clip_sample_range).astype(_F32)
    direction = (_F32(1) - alpha_prev) ** _F32(0.5) * epsilon
    return (alpha_prev ** _F32(0.5) * original + direction).astype(_F32)


class DiffusionOnnxRunner:
    """Run an exported Diffusion Policy: encode observations, denoise with the scheduler loop, unnormalize."""

    def __init__(
        self, directory: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 1
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.schedule = SamplerSchedule.load(self.directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.encoder = ort.InferenceSession(
            str(self.directory / ENCODER_ONNX), options, providers=list(providers)
        )
        self.denoiser = ort.InferenceSession(
            str(self.directory / DENOISER_ONNX), options, providers=list(providers)
        )
        self._alphas = np.asarray(self.schedule.alphas_cumprod, dtype=_F32)
        self._sample_type = _np_type(self.denoiser.get_inputs()[0].type)
        self._cond_type = _np_type(self.denoiser.get_inputs()[2].type)
        self._obs_types = {item.name: _np_type(item.type) for item in self.encoder.get_inputs()}

    def encode(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """The global conditioning (batch, dim) of raw observations shaped (batch, n_obs_steps, ...)."""
        missing = [name for name in self._obs_types if name not in observations]
        if missing:
            raise ValidationError(
                f"observations lack {', '.join(missing)}", hint=f"give {', '.join(self._obs_types)}"
            )
        feeds = {name: np.asarray(observations[name]).astype(kind) for name, kind in self._obs_types.items()}
        return np.asarray(self.encoder.run(None, feeds)[0], dtype=_F32)

    def denoise(self, sample: np.ndarray, t: int, condition: np.ndarray) -> np.ndarray:
        """One call of the denoiser network, its output in float32."""
        timestep = np.full((sample.shape[0],), t, dtype=np.int64)
        feeds = {
            self.denoiser.get_inputs()[0].name: sample.astype(self._sample_type),
            self.denoiser.get_inputs()[1].name: timestep,
            self.denoiser.get_inputs()[2].name: condition.astype(self._cond_type),
        }
        return np.asarray(self.denoiser.run(None, feeds)[0], dtype=_F32)

    def __call__(
        self,
        observations: Mapping[str, np.ndarray],
        noise: np.ndarray | None = None,
        num_inference_steps: int | None = None,
        step_noise: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """The unnormalized actions LeRobot executes: (batch, n_action_steps, action_dim).

        `noise` is the initial sample (batch, horizon, action_dim); `step_noise` holds DDPM's per-step draws
        (`schedule.noise_steps(steps)`, batch, horizon, action_dim). Missing ones are drawn from `seed`.
        """
        schedule = self.schedule
        steps = num_inference_steps or schedule.num_inference_steps
        condition = self.encode(observations)
        batch = condition.shape[0]
        shape = (batch, schedule.horizon, schedule.action_dim)
        rng = np.random.default_rng(seed)
        sample = np.asarray(noise if noise is not None else rng.standard_normal(shape), dtype=_F32)
        if sample.shape != shape:
            raise ValidationError(f"noise must have shape {shape}, got {sample.shape}")
        timesteps = schedule.timesteps(steps)
        draws = schedule.noise_steps(steps)
        if draws and step_noise is None:
            step_noise = rng.standard_normal((draws, *shape)).astype(_F32)
        if draws and step_noise is not None and tuple(step_noise.shape) != (draws, *shape):
            raise ValidationError(
                f"step_noise must have shape {(draws, *shape)}, got {tuple(step_noise.shape)}"
            )
        drawn = 0
        for index, t in enumerate(int(value) for value in timesteps):
            output = self.denoise(sample, t, condition)
            if schedule.kind == "DDIM":
                sample = ddim_step(schedule, self._alphas, output, t, steps, sample)
                continue
            prev_t = int(timesteps[index + 1]) if index + 1 < len(timesteps) else -1
            current = None
            if t > 0 and step_noise is not None:
                current = np.asarray(step_noise[drawn], dtype=_F32)
                drawn += 1
            sample = ddpm_step(schedule, self._alphas, output, t, prev_t, sample, current)
        start = schedule.n_obs_steps - 1
        actions = sample[:, start : start + schedule.n_action_steps]
        scale = np.asarray(schedule.action_scale, dtype=_F32)
        offset = np.asarray(schedule.action_offset, dtype=_F32)
        return (actions * scale + offset).astype(_F32)


def _np_type(onnx_type: str) -> Any:
    """The numpy dtype of an ONNX Runtime input type string."""
    return {"tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(double)": np.float64}.get(
        onnx_type, np.float32
    )
