"""Simulator plugins for closed-loop evaluation, by name: `get_simulator("reaching")`, `"gym:Reacher-v5"`,
`"pusht"`, `"aloha"`, ...

Named entries carry a task-specific success definition. Any other `gym:<id>` resolves to a generic
`GymPlugin`, whose success is the environment's registered reward threshold.
"""

from __future__ import annotations

from typing import Callable

from tools.errors import NotFoundError, ValidationError
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
    "aloha:transfer_cube": lambda **settings: AlohaPlugin("transfer_cube", **settings),
    "aloha:fast": lambda **settings: AlohaPlugin(fast_render=True, **settings),
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


STEPS_SUFFIX = ":steps="
"""`pusht:steps=20`: any LeRobot simulator with episodes cut to 20 steps (short checks, tests); the full length
otherwise (gym-pusht 300, gym-aloha 400)."""


def split_simulator_name(name: str) -> tuple[str, int | None]:
    """The plugin name and the episode length a `:steps=N` suffix asks for (None without one)."""
    base, found, steps = name.rpartition(STEPS_SUFFIX)
    if not found:
        return name, None
    if not steps.isdigit() or int(steps) < 1:
        raise ValidationError(f"simulator {name!r}: steps must be a positive integer, got {steps!r}")
    return base, int(steps)


def judges_by_agreement(name: str | None) -> bool:
    """Whether jobs in this simulator judge by closed-loop action agreement (LeRobot's simulators)."""
    return name is not None and split_simulator_name(name)[0] in AGREEMENT_SIMULATORS


def get_simulator(name: str) -> SimulatorPlugin:
    """Return a fresh plugin for `name`: a registered name, or `gym:<id>` of any gymnasium environment; a
    LeRobot simulator's name may end in `:steps=N` to cut its episodes to N steps."""
    base, steps = split_simulator_name(name)
    if steps is not None and base not in AGREEMENT_SIMULATORS:
        raise ValidationError(
            f"simulator {name!r}: only LeRobot's simulators take :steps=N ({', '.join(sorted(AGREEMENT_SIMULATORS))})"
        )
    if base in SIMULATORS:
        return SIMULATORS[base](max_steps=steps) if steps is not None else SIMULATORS[base]()
    if base.startswith(GYM_PREFIX) and len(base) > len(GYM_PREFIX):
        return GymPlugin(base[len(GYM_PREFIX) :])
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
    "judges_by_agreement",
    "split_simulator_name",
    "list_simulators",
    "reacher_plugin",
]
