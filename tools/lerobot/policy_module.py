"""A LeRobot policy as one deterministic torch module: raw observations in, unnormalized action chunk out.

`LeRobotPolicyModule.forward(*observations, **named)` takes the policy's observation tensors positionally, in
the order of `input_names`, or by those names (ONNX-safe names of LeRobot's `input_features`, e.g. `observation.images.top` ->
`observation_images_top`; `feature_keys` holds LeRobot's names in the same order), normalizes them with the
statistics of the saved `policy_preprocessor` pipeline, runs the policy's own network, and unnormalizes the
whole action chunk with the `policy_postprocessor`'s statistics: output `(batch, chunk, action_dim)`.

Normalization is folded into per-feature affine buffers (`x * scale + offset`), read from the pipelines that
LeRobot's `PolicyProcessorPipeline.from_pretrained` loads (JSON + safetensors, never pickles); MEAN_STD,
MIN_MAX, QUANTILES and QUANTILE10 all reduce to that form, so the module exports to plain Mul/Add.

What runs, per type (no action queue, no temporal ensembling: the whole chunk of one call):
- ACT: `policy.model(batch)[0]`, the forward behind `predict_action_chunk`; in eval mode its VAE latent is zero,
  so the module is deterministic without any seed. Shapes: images (B, C, H, W), state (B, D).
- Diffusion Policy: `policy.diffusion.generate_actions(batch, noise)`, returning the `n_action_steps` actions
  LeRobot executes. Noise decision: the initial sample is the fixed buffer `initial_noise` (seeded from `seed`,
  shape (1, horizon, action_dim), expanded over the batch), so with DDIM (eta 0) the module is a pure function
  of the observations and exports as one unrolled graph (the scheduler is wrapped in `StaticTimesteps`, which
  hands its timesteps out as Python ints so torch.export can unroll the loop). DDPM also draws fresh noise at
  every denoising step inside diffusers' scheduler; in eager mode those draws come from a private RNG stream
  seeded with `seed` on every call (`torch.random.fork_rng`, the caller's stream untouched), so equal
  observations give equal actions. DDPM's whole path therefore does not export with parity: for deployment
  its denoiser (`policy.diffusion.unet`) is exported on its own with a scheduler runner that takes the noise
  as an input. Shapes: (B, n_obs_steps, ...) per feature.
- VQ-BeT: `policy.vqbet(batch, rollout=True)[:, :action_chunk_size]`; its code sampling (`torch.multinomial`)
  draws from the same seeded private stream. Shapes: (B, n_obs_steps, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tools.errors import UnsupportedFormatError, ValidationError
from tools.inputs import safe_input_name
from tools.lerobot.imports import import_lerobot_module

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
ACTION_KEY = "action"
_IMAGES_KEY = "observation.images"
_STOCHASTIC_TYPES = frozenset({"diffusion", "vqbet"})
_OBSERVATION_KINDS = frozenset({"visual", "state", "env"})
# Each policy type's network and the roles of its parts, for profiling by component. ACT's transformer
# encoder fuses image and state tokens ("other"); its decoder turns action queries into the chunk.
_COMPONENT_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "act": (
        "policy.model",
        {
            "backbone": "vision_tower",
            "encoder_img_feat_input_proj": "projector",
            "encoder_robot_state_input_proj": "projector",
            "encoder_env_state_input_proj": "projector",
            "encoder_latent_input_proj": "projector",
            "decoder": "action_head",
            "decoder_pos_embed": "action_head",
            "action_head": "action_head",
        },
    ),
    "diffusion": ("policy.diffusion", {"rgb_encoder": "vision_tower", "unet": "action_head"}),
    "vqbet": (
        "policy.vqbet",
        {
            "rgb_encoder": "vision_tower",
            "state_projector": "projector",
            "rgb_feature_projector": "projector",
            "action_head": "action_head",
        },
    ),
}
# Steps of the saved pipelines that act on dict plumbing only (batch dim, device, renames, dtype).
_PLUMBING_STEPS = frozenset(
    {
        "RenameObservationsProcessorStep",
        "AddBatchDimensionProcessorStep",
        "DeviceProcessorStep",
        "ToBatchProcessorStep",
    }
)


def onnx_safe_name(key: str) -> str:
    """An input name every runtime accepts for a LeRobot feature key (`observation.state` -> `observation_state`)."""
    return safe_input_name(key)


class LeRobotPolicyModule(nn.Module):
    """Wrap a LeRobot policy and its normalization so that forward maps raw observations to an action chunk."""

    def __init__(
        self,
        policy: nn.Module,
        preprocessor: Any | None = None,
        postprocessor: Any | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        config = policy.config
        self.policy = policy.eval()
        self.policy_type = str(getattr(config, "type", getattr(policy, "name", "")))
        self.seed = int(seed)
        self.feature_keys: list[str] = [
            key
            for key, feature in config.input_features.items()
            if _feature_kind(feature) in _OBSERVATION_KINDS
        ]
        if not self.feature_keys:
            raise ValidationError(f"the {self.policy_type} policy declares no observation input_features")
        self.input_names = _unique_names([onnx_safe_name(key) for key in self.feature_keys])
        self.image_keys = [
            k for k in self.feature_keys if _feature_kind(config.input_features[k]) == "visual"
        ]
        action = config.output_features.get(ACTION_KEY)
        if action is None:
            raise ValidationError(f"the {self.policy_type} policy has no '{ACTION_KEY}' output feature")
        self.action_dim = int(action.shape[0])
        self.n_obs_steps = int(getattr(config, "n_obs_steps", 1))
        self.temporal = self.policy_type in ("diffusion", "vqbet")
        normalizer = _find_step(preprocessor, "NormalizerProcessorStep")
        unnormalizer = _find_step(postprocessor, "UnnormalizerProcessorStep")
        for index, key in enumerate(self.feature_keys):
            scale, offset = _affine(normalizer, key, config.input_features[key], inverse=False)
            self.register_buffer(f"input_scale_{index}", scale)
            self.register_buffer(f"input_offset_{index}", offset)
        scale, offset = _affine(unnormalizer, ACTION_KEY, action, inverse=True)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_offset", offset)
        self.normalized = normalizer is not None or unnormalizer is not None
        if self.policy_type == "diffusion":
            scheduler = policy.diffusion.noise_scheduler
            if not isinstance(scheduler, StaticTimesteps):
                scheduler = policy.diffusion.noise_scheduler = StaticTimesteps(scheduler)
            scheduler.set_timesteps(policy.diffusion.num_inference_steps)
            generator = torch.Generator().manual_seed(self.seed)
            noise = torch.randn((1, config.horizon, self.action_dim), generator=generator)
            self.register_buffer("initial_noise", noise)

    def train(self, mode: bool = True) -> "LeRobotPolicyModule":
        """Keep the policy on its inference path in both modes (gradients still flow for distillation).

        LeRobot's training mode is a different computation (ACT's VAE needs target actions, random crops),
        not the function being optimized.
        """
        super().train(mode)
        self.policy.eval()
        return self

    # ------------------------------------------------------------------ facts
    @property
    def chunk_size(self) -> int:
        """Actions per call (the length of the returned chunk)."""
        config = self.policy.config
        if self.policy_type == "diffusion":
            return int(config.n_action_steps)
        if self.policy_type == "vqbet":
            return int(config.action_chunk_size)
        return int(config.chunk_size)

    def policy_facts(self) -> dict[str, Any]:
        """The facts other parts rely on to treat this model as a policy (`LoadedModel.metadata['policy']`)."""
        config = self.policy.config
        return {
            "type": self.policy_type,
            "chunk_size": self.chunk_size,
            "action_dim": self.action_dim,
            "n_action_steps": int(getattr(config, "n_action_steps", self.chunk_size)),
            "n_obs_steps": self.n_obs_steps,
            "input_names": dict(zip(self.input_names, self.feature_keys)),
            "image_keys": list(self.image_keys),
            "normalized": self.normalized,
            "seed": self.seed,
        }

    def component_roles(self) -> tuple[str, dict[str, str]]:
        """The wrapper path of the policy's network and the role of each of its children (others: 'other')."""
        return _COMPONENT_ROLES.get(self.policy_type, ("policy", {}))

    def input_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """The shape of each raw observation input, by ONNX-safe name."""
        features = self.policy.config.input_features
        lead = (batch, self.n_obs_steps) if self.temporal else (batch,)
        return {
            name: (*lead, *(int(d) for d in features[key].shape))
            for name, key in zip(self.input_names, self.feature_keys)
        }

    # ---------------------------------------------------------------- forward
    def forward(self, *observations: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        """Map raw observations (positional in `input_names` order, or by those names) to the action chunk."""
        if named:
            unknown = sorted(set(named) - set(self.input_names))
            missing = [name for name in self.input_names[len(observations) :] if name not in named]
            if unknown or missing:
                raise ValidationError(
                    f"the {self.policy_type} policy takes {', '.join(self.input_names)}; "
                    f"unknown {unknown}, missing {missing}"
                )
            observations = (*observations, *(named[name] for name in self.input_names[len(observations) :]))
        if len(observations) != len(self.feature_keys):
            raise ValidationError(
                f"the {self.policy_type} policy takes {len(self.feature_keys)} observations "
                f"({', '.join(self.input_names)}), got {len(observations)}"
            )
        batch: dict[str, Any] = {}
        for index, (key, value) in enumerate(zip(self.feature_keys, observations)):
            scale = getattr(self, f"input_scale_{index}")
            offset = getattr(self, f"input_offset_{index}")
            batch[key] = value * scale + offset
        if self.policy_type in _STOCHASTIC_TYPES and not _tracing():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                actions = self._run_policy(batch)
        else:
            actions = self._run_policy(batch)
        return actions * self.action_scale + self.action_offset

    def _run_policy(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.policy_type == "act":
            if self.image_keys:
                batch[_IMAGES_KEY] = [batch[key] for key in self.image_keys]
            return self.policy.model(batch)[0]
        if self.image_keys:
            batch[_IMAGES_KEY] = torch.stack([batch[key] for key in self.image_keys], dim=-4)
        if self.policy_type == "diffusion":
            first = batch[self.feature_keys[0]]
            noise = self.initial_noise.expand(first.shape[0], -1, -1).to(first.dtype)
            return self.policy.diffusion.generate_actions(batch, noise=noise)
        if self.policy_type == "vqbet":
            return self.policy.vqbet(batch, rollout=True)[:, : self.chunk_size]
        raise UnsupportedFormatError(f"no forward for LeRobot policy type {self.policy_type!r}")


class StaticTimesteps:
    """A diffusers scheduler whose timesteps are Python ints, so the denoising loop unrolls under torch.export.

    diffusers keeps timesteps as a tensor; indexing its tables with a traced 0-d tensor and DDPM's
    `previous_timestep` (a `nonzero` lookup) are data-dependent and stop torch.export. With ints the same
    arithmetic runs eagerly and every step's constants fold. Everything else delegates to the scheduler.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.timesteps: list[int] = [int(t) for t in getattr(scheduler, "timesteps", [])]
        if hasattr(scheduler, "previous_timestep"):  # DDPM looks the previous step up in its own table
            scheduler.previous_timestep = _PreviousTimestep(
                self
            )  # an object, not a bound method: pickles plainly

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        """Set the scheduler's inference timesteps and keep them as ints (once per setting: the loop calls
        this on every forward, and under torch.export the tensor it builds would be traced)."""
        key = repr((args, sorted(kwargs.items())))
        if key == self.__dict__.get("_set_with"):
            return
        self.scheduler.set_timesteps(*args, **kwargs)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        self._set_with = key

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep after `timestep` in the inference schedule, -1 after the last."""
        index = self.timesteps.index(int(timestep))
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, **kwargs: Any
    ) -> Any:
        """One scheduler step with an int timestep."""
        return self.scheduler.step(model_output, int(timestep), sample, **kwargs)


class _PreviousTimestep:
    """Callable stand-in for DDPM's `previous_timestep` that asks the int schedule of a StaticTimesteps."""

    def __init__(self, owner: StaticTimesteps) -> None:
        self.owner = owner

    def __call__(self, timestep: int | torch.Tensor) -> int:
        return self.owner.previous_timestep(timestep)


def load_processors(directory: Path) -> tuple[Any | None, Any | None]:
    """Load the saved pre/post-processor pipelines of a policy directory with LeRobot's own loader.

    Returns (None, None) for directories saved before LeRobot 0.4 (no pipeline files): the module then
    takes already-normalized observations, which the caller records.
    """
    directory = Path(directory)
    pipeline_module = import_lerobot_module("lerobot.processor.pipeline")
    converters = import_lerobot_module("lerobot.processor.converters")
    pipeline_class = pipeline_module.PolicyProcessorPipeline
    adapters = {  # what LeRobot's own factory passes: dict batches in, a bare action tensor out
        PREPROCESSOR_FILE: (converters.batch_to_transition, converters.transition_to_batch),
        POSTPROCESSOR_FILE: (converters.policy_action_to_transition, converters.transition_to_policy_action),
    }
    loaded: list[Any | None] = []
    for filename, (to_transition, to_output) in adapters.items():
        if not (directory / filename).is_file():
            loaded.append(None)
            continue
        try:
            loaded.append(
                pipeline_class.from_pretrained(
                    str(directory),
                    config_filename=filename,
                    local_files_only=True,
                    to_transition=to_transition,
                    to_output=to_output,
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValidationError(
                f"{directory.name}/{filename}: LeRobot cannot load this processor pipeline: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
    return loaded[0], loaded[1]


def _find_step(pipeline: Any | None, class_name: str) -> Any | None:
    """The pipeline's (un)normalizer step; refuse steps robopt cannot fold into tensor ops."""
    if pipeline is None:
        return None
    found = None
    for step in getattr(pipeline, "steps", []):
        name = type(step).__name__
        if name == class_name:
            found = step
        elif name not in _PLUMBING_STEPS and name not in (
            "NormalizerProcessorStep",
            "UnnormalizerProcessorStep",
        ):
            raise UnsupportedFormatError(
                f"the policy's processor pipeline has a step robopt cannot fold into the model: {name}",
                hint="robopt folds renames, batching, device moves and (un)normalization; other steps "
                "(tokenizers, image resizing) are not supported yet",
            )
    return found


def _feature_kind(feature: Any) -> str:
    """'visual', 'state', 'env', 'language' or 'action' for a LeRobot PolicyFeature."""
    kind = getattr(getattr(feature, "type", None), "value", str(getattr(feature, "type", ""))).lower()
    return kind


def _affine(step: Any | None, key: str, feature: Any, *, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset so that `x * scale + offset` equals the step's (un)normalization of feature `key`."""
    one, zero = torch.ones(()), torch.zeros(())
    if step is None:
        return one, zero
    stats = getattr(step, "_tensor_stats", {}).get(key)
    mode = _norm_mode(step, feature)
    if not stats or mode == "IDENTITY":
        return one, zero
    eps = float(getattr(step, "eps", 1e-8))
    if mode == "MEAN_STD":
        mean, std = _stat(stats, "mean", key), _stat(stats, "std", key)
        if inverse:
            return std.clone(), mean.clone()
        scale = 1.0 / (std + eps)
        return scale, -mean * scale
    low_name, high_name = {
        "MIN_MAX": ("min", "max"),
        "QUANTILES": ("q01", "q99"),
        "QUANTILE10": ("q10", "q90"),
    }[mode]
    low, high = _stat(stats, low_name, key), _stat(stats, high_name, key)
    denom = high - low
    denom = torch.where(denom == 0, torch.full_like(denom, eps), denom)
    if inverse:  # (y + 1) / 2 * denom + low
        return denom / 2.0, low + denom / 2.0
    scale = 2.0 / denom  # 2 (x - low) / denom - 1
    return scale, -low * scale - 1.0


def _norm_mode(step: Any, feature: Any) -> str:
    """The normalization mode name the step applies to a feature's type (IDENTITY when unmapped)."""
    norm_map = getattr(step, "norm_map", {}) or {}
    feature_type = getattr(feature, "type", None)
    mode = norm_map.get(feature_type)
    if mode is None:  # maps deserialized with string keys
        mode = norm_map.get(getattr(feature_type, "value", feature_type))
    name = getattr(mode, "value", mode) or "IDENTITY"
    name = str(name).upper()
    if name not in ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10"):
        raise UnsupportedFormatError(f"unsupported LeRobot normalization mode {name!r}")
    return name


def _stat(stats: dict[str, torch.Tensor], name: str, key: str) -> torch.Tensor:
    value = stats.get(name)
    if value is None:
        raise ValidationError(
            f"the policy's normalization statistics for {key!r} lack {name!r}",
            hint="save the processors with complete dataset statistics",
        )
    return torch.as_tensor(value, dtype=torch.float32).detach().clone()


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}_{count}")
    return unique


def _tracing() -> bool:
    """Whether torch.export / torch.compile / the tracer is capturing the forward (no RNG forking there)."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())
