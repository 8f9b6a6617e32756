"""Gymnasium environments as robot tasks: making them and deriving their task spec."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from robot_sac.schemas import TaskSpec


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id)``, with a ``Dict`` observation flattened to one vector.

    The flattening is gymnasium's own ``FlattenObservation``, so a user driving a served policy
    with the env they already have gets the same observation layout.
    """
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    return env


def task_spec_from_env(env: gym.Env, name: str | None = None, **overrides: Any) -> TaskSpec:
    """The task spec of a Gymnasium env with a flat Box observation and a bounded Box action."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"observation space must be a flat Box, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"action space must be a flat Box, got {act_space}")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ValueError("action space must be bounded: SAC squashes actions into the bounds")
    spec_name = name or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
    return TaskSpec(
        name=spec_name,
        obs_dim=int(obs_space.shape[0]),
        action_low=tuple(float(x) for x in act_space.low),
        action_high=tuple(float(x) for x in act_space.high),
        **overrides,
    )
