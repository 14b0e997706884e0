"""Export Diffusion Policy for deployment: the observation encoder and the denoiser as ONNX, the loop as data.

The denoising loop is not one forward, so it is not exported as a graph: `encoder.onnx` (raw observations ->
global conditioning, normalization folded in), `denoiser.onnx` (the UNet: sample, timestep, conditioning) and
`sampler.json` run under `tools.lerobot.sampler.DiffusionOnnxRunner`. Parity runs the runner and the torch
policy (`LeRobotPolicyModule`, LeRobot's `generate_actions`) with the same initial noise and the same DDPM
step noise, for each requested number of denoising steps, on held-out observations.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from tools.compression.onnx_export import DEFAULT_OPSET, export_to_onnx, graph_opset
from tools.errors import UnsupportedFormatError
from tools.inputs import InputSpec
from tools.lerobot.export import (
    MANIFEST_FILE,
    OnnxPolicyExport,
    held_out_observations,
    observation_specs,
    rename_outputs,
)
from tools.lerobot.parity import ParityReport, compare_chunks
from tools.lerobot.policy_module import LeRobotPolicyModule
from tools.lerobot.sampler import (
    DENOISER_ONNX,
    ENCODER_ONNX,
    DiffusionOnnxRunner,
    SamplerSchedule,
)
from tools.log import get_logger

_log = get_logger("lerobot.diffusion_export")
_IMAGES_KEY = "observation.images"


class DiffusionConditioning(nn.Module):
    """Raw observations (positional, the policy module's input order) -> the UNet's global conditioning."""

    def __init__(self, module: LeRobotPolicyModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, *observations: torch.Tensor) -> torch.Tensor:
        module = self.module
        batch: dict[str, Any] = {}
        for index, (key, value) in enumerate(zip(module.feature_keys, observations)):
            batch[key] = value * getattr(module, f"input_scale_{index}") + getattr(
                module, f"input_offset_{index}"
            )
        if module.image_keys:
            batch[_IMAGES_KEY] = torch.stack([batch[key] for key in module.image_keys], dim=-4)
        return module.policy.diffusion._prepare_global_conditioning(batch)


class DiffusionDenoiser(nn.Module):
    """The denoiser network alone: noisy sample, integer timestep and conditioning -> model output."""

    def __init__(self, module: LeRobotPolicyModule) -> None:
        super().__init__()
        self.unet = module.policy.diffusion.unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, global_cond=global_cond)


def require_diffusion(module: LeRobotPolicyModule) -> None:
    """Refuse a policy module that is not a Diffusion Policy."""
    if module.policy_type != "diffusion":
        raise UnsupportedFormatError(
            f"the denoiser export applies to Diffusion Policy, not {module.policy_type!r}",
            hint="single-forward policies (ACT) export with tools.lerobot.export.export_policy_onnx",
        )


def schedule_of(module: LeRobotPolicyModule) -> SamplerSchedule:
    """The sampler settings of the policy's diffusers scheduler and its action unnormalization."""
    require_diffusion(module)
    model = module.policy.diffusion
    config = model.config
    scheduler = model.noise_scheduler
    settings = scheduler.config
    if (
        getattr(settings, "thresholding", False)
        or settings.get("variance_type", "fixed_small") != "fixed_small"
    ):
        raise UnsupportedFormatError(
            "the runner reproduces DDPM/DDIM without thresholding, fixed_small variance"
        )
    if settings.prediction_type not in ("epsilon", "sample"):
        raise UnsupportedFormatError(
            f"prediction_type {settings.prediction_type!r} is not supported by the runner"
        )
    action_dim = module.action_dim
    return SamplerSchedule(
        kind=config.noise_scheduler_type,
        num_train_timesteps=int(settings.num_train_timesteps),
        alphas_cumprod=[float(v) for v in scheduler.alphas_cumprod.float()],
        final_alpha_cumprod=float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))),
        timestep_spacing=settings.get("timestep_spacing", "leading"),
        steps_offset=int(settings.get("steps_offset", 0)),
        prediction_type=settings.prediction_type,
        clip_sample=bool(settings.clip_sample),
        clip_sample_range=float(settings.clip_sample_range),
        num_inference_steps=int(model.num_inference_steps),
        horizon=int(config.horizon),
        action_dim=action_dim,
        n_obs_steps=int(config.n_obs_steps),
        n_action_steps=int(config.n_action_steps),
        action_scale=[float(v) for v in module.action_scale.expand(action_dim)],
        action_offset=[float(v) for v in module.action_offset.expand(action_dim)],
        input_names=list(module.input_names),
    )


@contextlib.contextmanager
def inference_steps(module: LeRobotPolicyModule, steps: int | None) -> Iterator[None]:
    """Run the torch policy with `steps` denoising steps for the duration of the block."""
    model = module.policy.diffusion
    kept = model.num_inference_steps
    model.num_inference_steps = steps or kept
    try:
        yield
    finally:
        model.num_inference_steps = kept


def torch_step_noise(seed: int, count: int, shape: Sequence[int]) -> np.ndarray:
    """The per-step noise diffusers' DDPM draws from torch's global RNG after `torch.manual_seed(seed)`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = [torch.randn(tuple(shape)) for _ in range(count)]
    return torch.stack(draws).numpy() if draws else np.zeros((0, *shape), dtype=np.float32)


def runner_inputs(
    module: LeRobotPolicyModule, schedule: SamplerSchedule, batch_size: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The initial and per-step noise under which the runner reproduces the torch module's actions."""
    noise = module.initial_noise.expand(batch_size, -1, -1).numpy().astype(np.float32)
    shape = (batch_size, schedule.horizon, schedule.action_dim)
    return noise, torch_step_noise(module.seed, schedule.noise_steps(steps), shape)


PARITY_BUDGET_S = 30.0
"""Seconds the export's parity check may spend on the torch policy. A default-size DDPM policy takes 35 s a
chunk in eager PyTorch: its full check (two batches of observations) took 4.6 minutes of a 15-minute job while
the evaluate node compares the same runner with the same cached eager outputs anyway; past the budget the check
runs on one batch-1 observation and says so."""


T = TypeVar("T")


def within_budget(
    compare: Callable[[Mapping[str, torch.Tensor]], T],
    batches: Sequence[Mapping[str, torch.Tensor]],
    budget_s: float | None,
) -> tuple[list[T], str | None]:
    """`compare` on every batch; with a `budget_s`, a batch-1 probe of the first observation is timed first,
    and when all the batches' rows would not fit the budget at its pace the probe is the whole check. Returns
    the results and, when it sampled, why."""
    if budget_s is not None and batches:
        rows = sum(int(next(iter(batch.values())).shape[0]) for batch in batches)
        started = time.perf_counter()
        probe = compare({name: tensor[:1] for name, tensor in batches[0].items()})
        pace_s = time.perf_counter() - started
        if pace_s * rows > budget_s:
            return [probe], (
                f"one batch-1 observation: one takes {pace_s:.1f} s, so the {rows} held-out observations "
                f"would not fit the {budget_s:.0f} s budget"
            )
    return [compare(batch) for batch in batches], None


def diffusion_parity(
    module: LeRobotPolicyModule,
    directory: Path,
    batches: Sequence[Mapping[str, torch.Tensor]],
    steps: Sequence[int | None] = (None,),
    what: str = "onnx runner vs torch",
    budget_s: float | None = PARITY_BUDGET_S,
) -> ParityReport:
    """Compare the runner's actions with the torch policy's, same noise, for each number of steps.

    With a `budget_s` (`within_budget`), a slow policy is checked on one batch-1 observation per step count
    and the report's notes say so; evaluation then compares the runner with the original on the job's
    held-out data anyway."""
    runner = DiffusionOnnxRunner(directory)
    schedule = runner.schedule
    names = list(module.input_names)
    reference, candidate, used = [], [], []
    notes: dict[str, object] = {"seed": module.seed}

    def compare(batch: Mapping[str, torch.Tensor], count: int) -> tuple[torch.Tensor, np.ndarray]:
        expected = module(*(batch[name] for name in names))
        noise, step_noise = runner_inputs(module, schedule, expected.shape[0], count)
        arrays = {name: batch[name].numpy() for name in names}
        actions = runner(arrays, noise=noise, num_inference_steps=count, step_noise=step_noise)
        return expected.float(), actions

    for count in steps:
        count = count or schedule.num_inference_steps
        used.append(count)
        with inference_steps(module, count), torch.inference_mode():
            pairs, sampled = within_budget(lambda b: compare(b, count), batches, budget_s)
        if sampled:
            notes["sampled"] = f"{sampled} (torch and runner), per step count"
        for expected, actions in pairs:
            reference.append({"action": expected})
            candidate.append({"action": actions})
    notes.update(num_inference_steps=used, observations=sum(int(r["action"].shape[0]) for r in reference))
    return compare_chunks(reference, candidate, what=what, notes=notes)


def export_diffusion_onnx(
    module: LeRobotPolicyModule,
    directory: Path,
    *,
    opset: int = DEFAULT_OPSET,
    held_out: Sequence[Mapping[str, torch.Tensor]] | None = None,
    parity_steps: Sequence[int | None] = (None,),
    max_abs_error: float = 1e-3,
    min_cosine: float = 0.999,
    parity_budget_s: float | None = PARITY_BUDGET_S,
) -> OnnxPolicyExport:
    """Export the encoder and the denoiser of a Diffusion Policy, write sampler.json, and check parity.

    Raises OptimizationError naming the operator when the exporter cannot convert one, or when the runner's
    actions differ from the torch policy's (same noise) beyond the tolerances.
    """
    import onnx

    require_diffusion(module)
    module = module.eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    schedule = schedule_of(module)
    specs = observation_specs(module)
    started = time.perf_counter()
    encoder_path = export_to_onnx(
        DiffusionConditioning(module).eval(), specs, directory / ENCODER_ONNX, opset=opset
    )
    with torch.inference_mode():
        condition = DiffusionConditioning(module)(*(torch.zeros(s.shape) for s in specs))
    denoiser_specs = [
        InputSpec(name="sample", shape=(1, schedule.horizon, schedule.action_dim)),
        InputSpec(name="timestep", shape=(1,), dtype="int64", low=0, high=schedule.num_train_timesteps),
        InputSpec(name="global_cond", shape=(1, int(condition.shape[-1]))),
    ]
    denoiser_path = export_to_onnx(
        DiffusionDenoiser(module).eval(), denoiser_specs, directory / DENOISER_ONNX, opset=opset
    )
    seconds = time.perf_counter() - started
    for path, name in ((encoder_path, "global_cond"), (denoiser_path, "model_output")):
        proto = onnx.load(str(path))
        rename_outputs(proto, [name])
        onnx.save(proto, str(path))
    schedule.save(directory)
    batches = list(held_out) if held_out is not None else held_out_observations(specs)
    parity = diffusion_parity(
        module, directory, batches, parity_steps, what="onnx fp32 runner vs torch", budget_s=parity_budget_s
    )
    parity.save(directory)
    manifest = {
        "kind": "denoiser_runner",
        "policy_type": "diffusion",
        "inputs": [spec.model_dump(mode="json") for spec in specs],
        "outputs": ["action"],
        "scheduler": schedule.kind,
        "num_inference_steps": schedule.num_inference_steps,
        "opset": graph_opset(onnx.load(str(denoiser_path), load_external_data=False)),
        "dynamic_axes": {"batch": 0},
        "export_seconds": round(seconds, 2),
        "bytes": encoder_path.stat().st_size + denoiser_path.stat().st_size,
        "runner": "tools.lerobot.sampler.DiffusionOnnxRunner",
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    parity.require(max_abs_error, min_cosine)
    _log.info("exported a diffusion policy", extra={"component": "lerobot.export", "path": str(directory)})
    return OnnxPolicyExport(
        directory=directory,
        files={"encoder": ENCODER_ONNX, "denoiser": DENOISER_ONNX, "sampler": "sampler.json"},
        manifest=manifest,
        parity=parity,
    )
