"""Robot tasks with the Gymnasium API, from the libraries that model them, and their task specs.

- PyBullet's locomotion and control tasks, through ``pybullet-envs-gymnasium``:
  ``InvertedPendulumBulletEnv-v0``, ``ReacherBulletEnv-v0``, ``HalfCheetahBulletEnv-v0``,
  ``HopperBulletEnv-v0``, ``Walker2DBulletEnv-v0``, ``AntBulletEnv-v0``;
- the Franka Panda arm, through ``panda-gym``: ``PandaReachDense-v3``, ``PandaPushDense-v3``
  (dict observations flattened by gymnasium's ``FlattenObservation``);
- any other Gymnasium id (``Pendulum-v1``, ...).

Each env's robot and task share one physics client (the libraries do that), time-limit ends are
``truncated`` and task ends ``terminated`` (panda-gym ends an episode when the goal is reached),
and a seeded env is reproducible: :class:`ReproducibleResets` mends two ways panda-gym 3 breaks
that under Gymnasium 1.x.
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


class ReproducibleResets(gym.Wrapper, gym.utils.RecordConstructorArgs):  # type: ignore[type-arg]
    """Makes a panda-gym env reset the way Gymnasium promises.

    - ``reset(seed=s)`` then ``reset()`` repeats exactly: panda-gym 3 reseeds its goal sampler
      from entropy on every unseeded reset, so unseeded resets here draw the inner seed from a
      generator seeded by the last seeded reset;
    - with ``rebuild=True``, a seeded reset also starts a fresh physics client: in tasks with a
      movable object, PyBullet carries contact state from one episode into the next that neither
      panda-gym's reset nor ``restoreState`` clears, so the same seed and actions drifted by
      about 1e-6 after earlier episodes. Unseeded resets keep the client (they are the hot path).
    """

    def __init__(self, env: gym.Env, rebuild: bool = False) -> None:  # type: ignore[type-arg]
        gym.utils.RecordConstructorArgs.__init__(self, rebuild=rebuild)
        gym.Wrapper.__init__(self, env)
        self._rebuild = rebuild
        self._seeds = np.random.default_rng()
        self._fresh = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
            if self._rebuild and not self._fresh:
                spec = self.env.spec  # the inner stack, recreated by Gymnasium itself
                assert spec is not None  # made by gym.make, which records it
                self.env.close()
                self.env = gym.make(spec)
        else:
            seed = int(self._seeds.integers(2**31 - 1))
        self._fresh = False
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
        # Reach has no object: its physics repeats without a fresh client
        env = ReproducibleResets(env, rebuild=env_id not in ("PandaReachDense-v3", "PandaReach-v3"))
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
