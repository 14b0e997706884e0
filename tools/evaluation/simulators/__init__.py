"""Simulator plugins for closed-loop evaluation, by name: `get_simulator("reaching")`, `"gym:Reacher-v5"`,
`"pusht"`, `"aloha"`, ...

Named entries carry a task-specific success definition. Any other `gym:<id>` resolves to a generic
`GymPlugin`, whose success is the environment's registered reward threshold.
"""

from __future__ import annotations

from typing import Callable

from tools.errors import NotFoundError
from tools.evaluation.simulators.base import Observation, SimulatorPlugin, flatten_observation
from tools.evaluation.simulators.gym_env import GymEpisode, GymPlugin, reacher_plugin
from tools.evaluation.simulators.lerobot_envs import AlohaPlugin, LeRobotSimPlugin, PushTPlugin
from tools.evaluation.simulators.reaching import ReachingPlugin

GYM_PREFIX = "gym:"


def _single_target_reaching() -> ReachingPlugin:
    from tools.reference.conv_policy import SINGLE_TARGET_TASK

    return ReachingPlugin(SINGLE_TARGET_TASK, name="reaching:single_target")


SIMULATORS: dict[str, Callable[[], SimulatorPlugin]] = {
    "reaching": ReachingPlugin,
    "reaching:single_target": _single_target_reaching,
    "gym:Reacher-v5": reacher_plugin,
    "pusht": PushTPlugin,
    "aloha": AlohaPlugin,
    "aloha:transfer_cube": lambda: AlohaPlugin("transfer_cube"),
    "aloha:fast": lambda: AlohaPlugin(fast_render=True),
}
"""Named plugins: the reference VLA's task, the conv policy's single-target variant, MuJoCo Reacher-v5, and
LeRobot's simulators (gym-pusht, gym-aloha insertion / cube transfer; `aloha:fast` renders without shadows)."""

AGREEMENT_SIMULATORS = frozenset({"pusht", "aloha", "aloha:transfer_cube", "aloha:fast"})
"""Simulators whose jobs judge by closed-loop action agreement with the original (the policies run there are
LeRobot policies whose weights robopt cannot tell trained from random); their success rate is measured in
the same episodes and can be named in the goal ("keep the success rate")."""


def list_simulators() -> list[str]:
    """Names of the registered simulators (any other `gym:<id>` also works)."""
    return sorted(SIMULATORS)


def get_simulator(name: str) -> SimulatorPlugin:
    """Return a fresh plugin for `name`: a registered name, or `gym:<id>` of any gymnasium environment."""
    if name in SIMULATORS:
        return SIMULATORS[name]()
    if name.startswith(GYM_PREFIX) and len(name) > len(GYM_PREFIX):
        return GymPlugin(name[len(GYM_PREFIX) :])
    raise NotFoundError(
        f"unknown simulator {name!r}; registered: {', '.join(list_simulators())}",
        hint="or name any gymnasium environment as gym:<id>",
    )


__all__ = [
    "GYM_PREFIX",
    "SIMULATORS",
    "GymEpisode",
    "GymPlugin",
    "AGREEMENT_SIMULATORS",
    "AlohaPlugin",
    "LeRobotSimPlugin",
    "PushTPlugin",
    "Observation",
    "ReachingPlugin",
    "SimulatorPlugin",
    "flatten_observation",
    "get_simulator",
    "list_simulators",
    "reacher_plugin",
]
