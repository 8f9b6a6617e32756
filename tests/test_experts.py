"""The scripted experts solve their tasks on their own, in real PyBullet physics."""

from __future__ import annotations

import numpy as np
import pytest

from robot_sac.sim.envs import make_env
from robot_sac.sim.experts import (
    DESIRED_GOAL,
    EE_POSITION,
    EE_VELOCITY,
    EXPERT_TASKS,
    OBJECT_POSITION,
    expert_for,
)

SEEDS = range(20)  # fixed: the same episodes every run


def success_rate(env_id: str, random_steps: int = 0) -> float:
    """The expert's success over SEEDS, taking over after ``random_steps`` random actions (the
    time limit extended by as many steps, so that it gets its usual 50)."""
    env = make_env(env_id, max_episode_steps=random_steps + 50)
    expert = expert_for(env_id)
    rng = np.random.default_rng(0)
    successes = []
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        for t in range(random_steps + 50):
            if t < random_steps:
                action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            else:
                action = expert(obs)
                assert action.dtype == np.float32 and env.action_space.contains(action)
            obs, _, terminated, truncated, info = env.step(action)
            if truncated or (terminated and t >= random_steps):
                break
        successes.append(bool(info["is_success"]))
    env.close()
    return float(np.mean(successes))


@pytest.mark.parametrize("env_id", EXPERT_TASKS)
def test_each_expert_solves_its_task(env_id: str) -> None:
    assert success_rate(env_id) >= 0.9


@pytest.mark.parametrize("env_id", ["PandaReachDense-v3", "PandaPushDense-v3"])
def test_an_expert_takes_over_from_wherever_the_robot_is(env_id: str) -> None:
    """As an operator taking the controls: after random actions (the cube knocked about)."""
    assert success_rate(env_id, random_steps=15) >= 0.9


def test_the_observation_layout_is_what_panda_gym_says() -> None:
    """The slices the experts read are the env's own end-effector, cube and goal."""
    env = make_env("PandaPushDense-v3")
    obs, _ = env.reset(seed=3)
    for _ in range(5):
        obs, *_ = env.step(np.array([0.5, -0.5, -0.5], np.float32))
    inner = env.unwrapped
    np.testing.assert_allclose(obs[EE_POSITION], inner.robot.get_ee_position(), atol=1e-6)
    np.testing.assert_allclose(obs[EE_VELOCITY], inner.robot.get_ee_velocity(), atol=1e-6)
    np.testing.assert_allclose(
        obs[OBJECT_POSITION], inner.sim.get_base_position("object"), atol=1e-6
    )
    np.testing.assert_allclose(obs[DESIRED_GOAL], inner.task.get_goal(), atol=1e-6)
    env.close()


def test_no_expert_for_other_tasks() -> None:
    with pytest.raises(ValueError, match="PandaPushDense-v3"):
        expert_for("HalfCheetahBulletEnv-v0")
