"""An exported Diffusion Policy (encoder.onnx + denoiser.onnx + sampler.json) as a module robopt measures.

`SamplerRunnerModule` calls `DiffusionOnnxRunner` (ONNX Runtime and numpy; torch only converts in and out) and
keeps `LeRobotPolicyModule`'s noise convention, written at export in `runner.json`: the initial sample is the
fixed seeded noise (stored in `initial_noise.npy`), and DDPM's per-step noise comes from torch's generator
seeded with the policy's seed on every call. The same observations therefore give the same actions as the
torch policy, so fidelity against the original measures the export (and its precision), not the noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tools.errors import ValidationError
from tools.lerobot.sampler import DENOISER_ONNX, ENCODER_ONNX, SAMPLER_FILE, DiffusionOnnxRunner

RUNNER_FILE = "runner.json"
NOISE_FILE = "initial_noise.npy"
RUNNER_FILES = (SAMPLER_FILE, ENCODER_ONNX, DENOISER_ONNX)


def write_runner_facts(
    directory: Path, policy: dict[str, Any], inputs: list[dict[str, Any]], initial_noise: np.ndarray
) -> None:
    """Write the policy facts, input specs and initial noise the runner module reproduces the policy with."""
    directory = Path(directory)
    facts = {"policy": policy, "inputs": inputs}
    (directory / RUNNER_FILE).write_text(json.dumps(facts, indent=1, sort_keys=True))
    np.save(directory / NOISE_FILE, np.asarray(initial_noise, dtype=np.float32))


def read_runner_facts(directory: Path) -> tuple[dict[str, Any], np.ndarray]:
    """The runner facts ('policy', 'inputs') and initial noise of a runner directory written by `write_runner_facts`."""
    directory = Path(directory)
    missing = [name for name in (*RUNNER_FILES, RUNNER_FILE, NOISE_FILE) if not (directory / name).is_file()]
    if missing:
        raise ValidationError(
            f"{directory.name}/ lacks {', '.join(missing)}; it is not a complete exported diffusion policy",
            hint="export it again with the lerobot_sampler_export technique",
        )
    try:
        facts = json.loads((directory / RUNNER_FILE).read_text())
        facts = {"policy": dict(facts["policy"]), "inputs": list(facts["inputs"])}
        noise = np.load(directory / NOISE_FILE, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"{directory.name}/: unreadable runner facts: {exc}") from None
    return facts, np.asarray(noise, dtype=np.float32)


class SamplerRunnerModule(nn.Module):
    """Raw observations (the policy's input names) -> the unnormalized action chunk, through the ONNX runner."""

    def __init__(self, directory: Path, threads: int = 1) -> None:
        super().__init__()
        self.directory = Path(directory)
        facts, self.initial_noise = read_runner_facts(self.directory)
        self.policy, self.inputs = facts["policy"], facts["inputs"]
        self.runner = DiffusionOnnxRunner(self.directory, threads=threads)
        self.threads = threads
        self.input_names = list(self.runner.schedule.input_names)
        self.seed = int(self.policy.get("seed", 0))

    def set_threads(self, threads: int) -> None:
        """Run the encoder and denoiser sessions on `threads` intra-op threads (latency measurement sets it)."""
        if threads != self.threads:
            self.runner = DiffusionOnnxRunner(self.directory, threads=threads)
            self.threads = threads

    def policy_facts(self) -> dict[str, Any]:
        """The facts of the exported policy (`LoadedModel.metadata['policy']`)."""
        return dict(self.policy)

    def step_noise(self, batch: int) -> np.ndarray | None:
        """DDPM's per-step draws as the torch policy makes them: torch's generator seeded with `seed`."""
        schedule = self.runner.schedule
        count = schedule.noise_steps(schedule.num_inference_steps)
        if not count:
            return None
        shape = (batch, schedule.horizon, schedule.action_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return torch.stack([torch.randn(shape) for _ in range(count)]).numpy()

    def forward(self, *observations: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        """Run the exported sampler on raw observations (positional in `input_names` order, or by name)."""
        values = dict(zip(self.input_names, observations)) | named
        missing = [name for name in self.input_names if name not in values]
        if missing:
            raise ValidationError(
                f"the exported diffusion policy takes {', '.join(self.input_names)}; missing {missing}"
            )
        arrays = {name: values[name].detach().cpu().numpy() for name in self.input_names}
        batch = int(next(iter(arrays.values())).shape[0])
        noise = np.broadcast_to(self.initial_noise, (batch, *self.initial_noise.shape[-2:])).copy()
        actions = self.runner(arrays, noise=noise, step_noise=self.step_noise(batch))
        return torch.from_numpy(actions)
