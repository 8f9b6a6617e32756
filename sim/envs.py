"""Robot tasks with the Gymnasium API, from the libraries that model them, and their task specs.

- PyBullet's locomotion and control tasks, through ``pybullet-envs-gymnasium``:
  ``InvertedPendulumBulletEnv-v0``, ``ReacherBulletEnv-v0``, ``HalfCheetahBulletEnv-v0``,
  ``HopperBulletEnv-v0``, ``Walker2DBulletEnv-v0``, ``AntBulletEnv-v0``;
- the Franka Panda arm, through ``panda-gym``: ``PandaReachDense-v3``, ``PandaPushDense-v3``
  (dict observations flattened by gymnasium's ``FlattenObservation``);
- any other Gymnasium id (``Pendulum-v1``, ...).

Each env's robot and task share one physics client (the libraries do that), time-limit ends are
``truncated`` and task ends ``terminated``, and a seeded env is reproducible: panda-gym 3 reseeds
its goal sampler from entropy on every unseeded reset, which breaks Gymnasium's contract (a
``reset(seed=s)`` then ``reset()`` must repeat); :class:`SeededReset` restores it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from robot_sac.config import tuned_config
from robot_sac.schemas import TaskSpec

PYBULLET_TASKS = (
    "InvertedPendulumBulletEnv-v0",
    "ReacherBulletEnv-v0",
    "HalfCheetahBulletEnv-v0",
    "HopperBulletEnv-v0",
    "Walker2DBulletEnv-v0",
    "AntBulletEnv-v0",
)
PANDA_TASKS = ("PandaReachDense-v3", "PandaPushDense-v3")
SIM_TASKS = PYBULLET_TASKS + PANDA_TASKS

# Panda tasks succeed when the goal is within 5 cm at the end; their dense reward is minus that
# distance, so an episode whose last reward is at least -0.05 succeeded.
SUCCESS_THRESHOLD = {task: -0.05 for task in PANDA_TASKS}


class SeededReset(gym.Wrapper):  # type: ignore[type-arg]
    """``reset(seed=s)`` then ``reset()`` repeats exactly, whatever the inner env does.

    Unseeded resets draw the inner env's seed from a generator seeded by the last seeded reset.
    """

    def __init__(self, env: gym.Env) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self._seeds = np.random.default_rng()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
        else:
            seed = int(self._seeds.integers(2**31 - 1))
        return self.env.reset(seed=seed, options=options)


def _register(env_id: str) -> None:
    """Import the library that registers ``env_id`` (they register on import)."""
    if env_id in PANDA_TASKS or env_id.startswith("Panda"):
        import panda_gym  # noqa: F401
    elif env_id in PYBULLET_TASKS or env_id.endswith("BulletEnv-v0"):
        import pybullet_envs_gymnasium  # noqa: F401


def make_env(env_id: str, **kwargs: Any) -> gym.Env:  # type: ignore[type-arg]
    """``gymnasium.make(env_id)`` with a ``Dict`` observation flattened to one vector.

    The flattening is gymnasium's own ``FlattenObservation``, so a user driving a served policy
    with the env they already have gets the same observation layout.
    """
    _register(env_id)
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    if env_id in PANDA_TASKS or env_id.startswith("Panda"):
        env = SeededReset(env)
    return env


def task_spec_from_env(env: gym.Env, name: str | None = None, **overrides: Any) -> TaskSpec:  # type: ignore[type-arg]
    """The task spec of a Gymnasium env with a flat Box observation and a bounded Box action."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"observation space must be a flat Box, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"action space must be a flat Box, got {act_space}")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ValueError("action space must be bounded: SAC squashes actions into the bounds")
    spec_name = name or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
    fields: dict[str, Any] = {"success_threshold": SUCCESS_THRESHOLD.get(spec_name)}
    fields.update(overrides)
    return TaskSpec(
        name=spec_name,
        obs_dim=int(obs_space.shape[0]),
        action_low=tuple(float(x) for x in act_space.low),
        action_high=tuple(float(x) for x in act_space.high),
        **fields,
    )


def task_spec(env_id: str, **overrides: Any) -> TaskSpec:
    """The task spec of ``env_id``, with the shipped settings for it (overridable)."""
    env = make_env(env_id)
    try:
        return task_spec_from_env(env, name=env_id, **{"sac": tuned_config(env_id), **overrides})
    finally:
        env.close()
