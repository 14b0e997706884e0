"""LeRobot's simulators as closed-loop plugins: `pusht` (gym-pusht, Diffusion Policy's task) and `aloha`
(gym-aloha, ACT's bimanual insertion and cube transfer), with observation adapters to LeRobot's feature names.

The environments are created with `obs_type="pixels_agent_pos"`; the adapter feeds `observation.state` from
`agent_pos` and every `observation.image` / `observation.images.<camera>` input from the rendered camera
(HWC uint8 -> CHW float in [0, 1], resized when the policy's image shape differs). Inputs may also carry the
ONNX-safe form of those names (`observation_images_top`), as robopt's LeRobot intake names them. A policy that takes a
history of observations (an input shaped (B, T, ...)) gets the last T observations, the first one repeated at
the start of an episode as LeRobot's observation queues do. The loop executes `actions_per_call` actions of
each chunk (the policy's `n_action_steps` once bound to a LeRobot policy) and then re-plans.

gym-aloha renders three 480x640 cameras per step; the plugin renders only the cameras a policy reads, which
leaves the observation unchanged. `fast_render=True` also turns off shadows and multisampling (about 5x
faster with software OpenGL; the images change slightly, so use it for agreement, not for trained weights).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Sequence

import numpy as np
import torch

from tools.errors import MissingDependencyError, ValidationError
from tools.evaluation.simulators.base import numpy_dtype
from tools.evaluation.simulators.gym_env import GymEpisode, GymPlugin, _gymnasium
from tools.inputs import InputSpec

STATE_KEY = "observation.state"
IMAGE_KEY = "observation.image"
IMAGES_PREFIX = "observation.images."
SIM_INSTALL_HINT = "pip install 'robopt[sim]' (gym-pusht; gym-aloha and dm-control: see the README)"


def _import_package(module: str) -> None:
    """Import the package that registers the environment ids, with an install hint when it is missing."""
    if module == "gym_aloha":
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; osmesa or glfw can be chosen outside
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame greets on stdout at import otherwise
    try:
        __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {module} simulator is not installed ({exc})", hint=SIM_INSTALL_HINT
        ) from None


class LeRobotSimPlugin(GymPlugin):
    """A LeRobot gymnasium environment observed as `pixels` + `agent_pos`; success is the env's `is_success`."""

    package: str = ""
    action_dim: int = 0

    def __init__(
        self,
        env_id: str,
        *,
        name: str,
        success_definition: str,
        max_steps: int | None = None,
        actions_per_call: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _import_package(self.package)
        super().__init__(
            env_id,
            success=lambda episode: bool(episode.info.get("is_success", False)),
            success_definition=success_definition,
            max_steps=max_steps,
            env_kwargs={"obs_type": "pixels_agent_pos", **(env_kwargs or {})},
        )
        self.name = name
        self.actions_per_call = actions_per_call or self.max_steps
        self.history = 1

    def bind(self, input_specs: Sequence[InputSpec], metadata: dict[str, Any]) -> None:
        """Take the observation history length from the inputs and `n_action_steps` from LeRobot metadata."""
        self.history = max(
            [1]
            + [
                _time_steps(spec)
                for spec in input_specs
                if _feature_key(spec.name).startswith("observation.")
            ]
        )
        policy = metadata.get("policy") if isinstance(metadata, dict) else None
        steps = _policy_value(policy, "n_action_steps")
        if steps:
            self.actions_per_call = int(steps)

    def make_env(self, seed: int) -> tuple[GymEpisode, dict[str, Any]]:
        """Create and reset the episode of `seed`; the observation carries the recent history."""
        episode, observation = super().make_env(seed)
        episode.info["history"] = collections.deque([observation] * self.history, maxlen=self.history)
        return episode, {"history": list(episode.info["history"])}

    def step(self, env: GymEpisode, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        """Step, keeping the last `history` observations."""
        history = env.info["history"]
        observation, finished = super().step(env, action)
        history.append(observation)
        env.info["history"] = history
        return {"history": list(history)}, finished

    def adapter(
        self, observations: Sequence[dict[str, Any]], input_specs: Sequence[InputSpec]
    ) -> dict[str, np.ndarray]:
        """Feed LeRobot's named inputs: `observation.state` and the camera images, batch first."""
        inputs = {}
        for spec in input_specs:
            frames = [self._feature(observation["history"], spec) for observation in observations]
            inputs[spec.name] = np.stack(frames).astype(numpy_dtype(spec), copy=False)
        return inputs

    def action_from_outputs(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Read the first output as action chunks (B, K, A) or single actions (B, A) for this env's A."""
        actions = np.asarray(outputs[0], dtype=np.float32)
        if actions.ndim == 2:
            actions = actions[:, None]
        if actions.ndim != 3 or actions.shape[2] != self.action_dim:
            raise ValidationError(
                f"{self.name}: the policy's output has shape {actions.shape}; expected (B, K, {self.action_dim}) "
                f"or (B, {self.action_dim})",
                hint="use a policy whose action feature matches the environment's action space",
            )
        return actions

    def trajectory_state(self, env: GymEpisode) -> np.ndarray:
        """The simulator state that two trajectories are compared on (plugin-specific units)."""
        return np.asarray(env.info.get("history", [{}])[-1].get("agent_pos", ()), dtype=np.float64)

    def initial_state(self, env: GymEpisode, observation: dict[str, Any]) -> np.ndarray:
        """What makes two episodes the same episode: the full simulator state at reset."""
        return self.trajectory_state(env)

    def episode_facts(self, env: GymEpisode) -> dict[str, float]:
        """The episode return."""
        return {"return": env.total_reward}

    def describe(self) -> dict[str, Any]:
        """Return the plugin's settings, with the observation history length."""
        return {**super().describe(), "history": self.history}

    def _cameras(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        pixels = observation["pixels"]
        return dict(pixels) if isinstance(pixels, dict) else {"top": pixels}

    def _feature(self, history: list[dict[str, Any]], spec: InputSpec) -> np.ndarray:
        """One sample of input `spec` from an episode's recent observations."""
        steps = _time_steps(spec)
        frames = [self._frame(observation, spec) for observation in history[-steps:]]
        frames = [frames[0]] * (steps - len(frames)) + frames
        sample = np.stack(frames) if len(spec.shape) > (4 if _is_image(spec) else 2) else frames[-1]
        return sample

    def _frame(self, observation: dict[str, Any], spec: InputSpec) -> np.ndarray:
        if _feature_key(spec.name) == STATE_KEY:
            state = np.asarray(observation["agent_pos"], dtype=np.float32)
            if state.shape[0] != spec.shape[-1]:
                raise ValidationError(
                    f"{self.name} observes a {state.shape[0]}-dim agent_pos; the policy's {STATE_KEY} takes "
                    f"{spec.shape[-1]}",
                    hint="use a policy trained on this environment's state",
                )
            return state
        if not _is_image(spec):
            raise ValidationError(
                f"{self.name} has no observation for input {spec.name!r}",
                hint=f"it feeds {STATE_KEY}, {IMAGE_KEY} and {IMAGES_PREFIX}<camera>",
            )
        return _to_chw(self._camera(observation, _feature_key(spec.name)), spec)

    def _camera(self, observation: dict[str, Any], name: str) -> np.ndarray:
        cameras = self._cameras(observation)
        camera = name[len(IMAGES_PREFIX) :] if name.startswith(IMAGES_PREFIX) else None
        if camera in cameras:
            return cameras[camera]
        if len(cameras) == 1:
            return next(iter(cameras.values()))
        raise ValidationError(
            f"{self.name} renders cameras {sorted(cameras)}; the policy asks for {name!r}",
            hint=f"name the input {IMAGES_PREFIX}<camera> with one of those cameras",
        )


def _feature_key(name: str) -> str:
    """LeRobot's feature key for an input name, also from its ONNX-safe form (`observation_images_top`)."""
    for key in (STATE_KEY, IMAGE_KEY):
        if name in (key, key.replace(".", "_")):
            return key
    safe_prefix = IMAGES_PREFIX.replace(".", "_")
    if name.startswith(safe_prefix):
        return IMAGES_PREFIX + name[len(safe_prefix) :]
    return name


def _is_image(spec: InputSpec) -> bool:
    key = _feature_key(spec.name)
    return key == IMAGE_KEY or key.startswith(IMAGES_PREFIX)


def _time_steps(spec: InputSpec) -> int:
    """Observation steps an input takes: (B, T, C, H, W) or (B, T, D) -> T, else 1."""
    base = 4 if _is_image(spec) else 2
    return int(spec.shape[1]) if len(spec.shape) == base + 1 else 1


def _policy_value(policy: Any, key: str) -> Any:
    if policy is None:
        return None
    if isinstance(policy, dict):
        return policy.get(key) or (policy.get("config") or {}).get(key)
    return getattr(policy, key, None) or getattr(getattr(policy, "config", None), key, None)


def _to_chw(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HWC uint8 -> CHW, resized to the spec's (H, W); float specs get [0, 1], integer specs keep 0-255."""
    height, width = int(spec.shape[-2]), int(spec.shape[-1])
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if tuple(tensor.shape[1:]) != (height, width):
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )[0].clamp(
            0, 255
        )  # antialiased resampling overshoots a little at edges
    if np.issubdtype(numpy_dtype(spec), np.integer):
        return tensor.round().clamp(0, 255).numpy().astype(numpy_dtype(spec))
    return (tensor / 255.0).numpy()


class PushTPlugin(LeRobotSimPlugin):
    """gym-pusht's PushT-v0: push the T block onto the target; 96x96 image + 2-D agent position."""

    package = "gym_pusht"
    action_dim = 2

    def __init__(self, *, max_steps: int | None = None, actions_per_call: int | None = None) -> None:
        super().__init__(
            "gym_pusht/PushT-v0",
            name="pusht",
            success_definition="the T block covers more than 95% of the target (gym-pusht's is_success)",
            max_steps=max_steps,
            actions_per_call=actions_per_call,
        )

    def trajectory_state(self, env: GymEpisode) -> np.ndarray:
        """Agent position and block pose (x, y, angle), in the env's pixel units."""
        sim = env.env.unwrapped
        return np.array([*sim.agent.position, *sim.block.position, sim.block.angle], dtype=np.float64)


class AlohaPlugin(LeRobotSimPlugin):
    """gym-aloha's bimanual tasks: 480x640 top camera + 14 joint positions, 14-D joint targets."""

    package = "gym_aloha"
    action_dim = 14
    TASKS = {"insertion": "gym_aloha/AlohaInsertion-v0", "transfer_cube": "gym_aloha/AlohaTransferCube-v0"}

    def __init__(
        self,
        task: str = "insertion",
        *,
        fast_render: bool = False,
        max_steps: int | None = None,
        actions_per_call: int | None = None,
    ) -> None:
        if task not in self.TASKS:
            raise ValidationError(f"unknown aloha task {task!r}; known: {', '.join(self.TASKS)}")
        self.task = task
        self.fast_render = fast_render
        self.cameras: tuple[str, ...] = ("top",)
        super().__init__(
            self.TASKS[task],
            name="aloha" + ("" if task == "insertion" else f":{task}") + (":fast" if fast_render else ""),
            success_definition=f"gym-aloha's {task} reward reaches its maximum, 4 (is_success)",
            max_steps=max_steps,
            actions_per_call=actions_per_call,
        )

    def make_env(self, seed: int) -> tuple[GymEpisode, dict[str, Any]]:
        """Create the episode, rendering only the cameras a policy reads (and, if fast, without shadows)."""
        env = _gymnasium().make(self.env_id, max_episode_steps=self.max_steps, **self.env_kwargs)
        sim = env.unwrapped._env
        if self.fast_render:  # read when the rendering context is made, at the first render
            sim.physics.model.vis.quality.shadowsize = 0
            sim.physics.model.vis.quality.offsamples = 0
        sim.task.get_observation = _observe_cameras(sim.task, self.cameras)
        observation, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        history = collections.deque([observation] * self.history, maxlen=self.history)
        episode = GymEpisode(env=env, seed=seed, info={**info, "history": history})
        return episode, {"history": list(history)}

    def trajectory_state(self, env: GymEpisode) -> np.ndarray:
        """Every joint and free body's position (arms, grippers, objects) from MuJoCo's qpos."""
        return np.asarray(env.env.unwrapped._env.physics.data.qpos, dtype=np.float64).copy()

    def describe(self) -> dict[str, Any]:
        """Return the plugin's settings, with the task and rendering."""
        return {**super().describe(), "task": self.task, "fast_render": self.fast_render}


def _observe_cameras(task: Any, cameras: Sequence[str]) -> Any:
    """gym-aloha's `get_observation`, rendering only `cameras` (the rest of the observation is unchanged)."""

    def get_observation(physics: Any) -> collections.OrderedDict:
        observation = collections.OrderedDict()
        observation["qpos"] = task.get_qpos(physics)
        observation["qvel"] = task.get_qvel(physics)
        observation["env_state"] = task.get_env_state(physics)
        observation["images"] = {
            camera: physics.render(height=480, width=640, camera_id=camera) for camera in cameras
        }
        return observation

    return get_observation
