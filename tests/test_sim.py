"""Simulated robot tasks: Gymnasium's checker, reproducibility, how episodes end, the robot loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robot_sac.sim.envs import PANDA_TASKS, SIM_TASKS, make_env, task_spec
from tests.servers import start_thread_service


@pytest.mark.parametrize("env_id", [*SIM_TASKS, "Pendulum-v1"])
def test_every_exposed_env_passes_gymnasiums_checker(env_id: str):
    env = make_env(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded observation boxes and wrapper notes
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ["PandaReachDense-v3", "HalfCheetahBulletEnv-v0"])
def test_a_seeded_env_is_reproducible(env_id: str):
    def trajectory() -> list[np.ndarray]:
        env = make_env(env_id)
        actions = np.random.default_rng(7).uniform(-1, 1, (120, env.action_space.shape[0]))
        obs, _ = env.reset(seed=3)
        out = [obs]
        for a in actions:
            obs, reward, terminated, truncated, _ = env.step(a.astype(np.float32))
            out.append(np.append(obs, reward))
            if terminated or truncated:
                obs, _ = env.reset()  # unseeded resets continue the seeded sequence
                out.append(obs)
        env.close()
        return out

    first, second = trajectory(), trajectory()
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_panda_unseeded_resets_follow_the_seed():
    env = make_env("PandaReachDense-v3")
    goals = []
    for _ in range(2):
        env.reset(seed=11)
        # flattened keys are sorted: achieved_goal (3), desired_goal (3), observation
        goals.append([env.reset()[0][3:6] for _ in range(3)])
    np.testing.assert_array_equal(np.asarray(goals[0]), np.asarray(goals[1]))
    assert not np.allclose(goals[0][0], goals[0][1])  # but they do differ from each other
    env.close()


def test_time_limits_truncate_and_task_ends_terminate():
    reach = make_env("PandaReachDense-v3")
    reach.reset(seed=0)
    ends = []
    for _ in range(50):
        _, _, terminated, truncated, _ = reach.step(np.zeros(3, np.float32))
        ends.append((terminated, truncated))
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])
    reach.close()
    pole = make_env("InvertedPendulumBulletEnv-v0")
    pole.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = pole.step(np.ones(1, np.float32))  # push it over
        steps += 1
    assert terminated and not truncated and steps < 200
    pole.close()


def test_task_specs_carry_tuned_settings_and_success():
    reach = task_spec("PandaReachDense-v3")
    assert (reach.obs_dim, reach.action_dim) == (12, 3)
    assert reach.action_low == (-1.0,) * 3 and reach.success_threshold == -0.05
    assert (reach.sac.gamma, reach.sac.lr, reach.sac.init_alpha) == (0.95, 1e-3, 0.1)
    cheetah = task_spec("HalfCheetahBulletEnv-v0")
    assert cheetah.obs_dim == 26 and cheetah.success_threshold is None
    for env_id in PANDA_TASKS:
        assert task_spec(env_id).success_threshold is not None


def test_a_simulated_robot_acts_and_logs_through_the_service(tmp_path):
    from robot_sac.sim.robot import run_robot

    spec = task_spec("PandaReachDense-v3")
    svc = start_thread_service(tmp_path / "data", spec)
    try:
        reports = run_robot(svc.url, "PandaReachDense-v3", "sim-0", steps=120, seed=1, run_id="r1")
        store = svc.state.store
        assert store.transition_count() == 120
        # an episode ends at the goal (terminated, a success) or after 50 steps (truncated)
        assert len(reports) >= 2 and sum(r.steps for r in reports) <= 120
        assert all(r.success == (r.steps < 50) or r.steps == 50 for r in reports)
        assert all(r.success is not None and r.policy_version == 0 for r in reports)
        assert [r.episode_id for r in reports] == [f"r1-{i}" for i in range(len(reports))]
        episodes = store.episodes_by_version()
        assert episodes[0].episodes == len(reports) and episodes[0].success_rate is not None
        # success in the store (last reward >= -0.05) agrees with the env's own flag
        assert episodes[0].success_rate == np.mean([r.success for r in reports])
    finally:
        svc.stop()


def test_a_simulated_robot_rides_out_429_and_503(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Over its token's rate the service answers 429; the robot waits and asks again."""
    from robot_sac.client import RobotClient, ServiceError
    from robot_sac.sim.robot import _act
    from tests.servers import CHEETAH

    svc = start_thread_service(tmp_path / "d", rate_limit_per_s=5.0, rate_limit_burst=2)
    try:
        obs = np.zeros(CHEETAH.obs_dim, np.float32)
        with RobotClient(svc.url, robot_id="sim-0") as client:
            client.act(obs.tolist())
            client.act(obs.tolist())  # the burst spent
            with pytest.raises(ServiceError) as refused:
                client.act(obs.tolist())
            assert refused.value.status == 429
            for _ in range(5):
                action, version, hold = _act(client, obs, deterministic=True)
                assert len(action) == CHEETAH.action_dim and version == 0 and not hold
        assert "robot_sac_rate_limited_total" in svc.client().get("/metrics").text
    finally:
        svc.stop()
