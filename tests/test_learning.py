"""Learning, end to end in one process (slow): SAC must actually solve a control task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robot_sac.config import tuned_config
from robot_sac.policy import load_policy, save_policy
from robot_sac.store import Store
from robot_sac.train_local import evaluate, train_local

gym = pytest.importorskip("gymnasium")
from robot_sac.sim.envs import make_env, task_spec_from_env  # noqa: E402


def _updates(store: Store) -> int:
    status = store.learner_status()
    return 0 if status is None else status.updates


@pytest.mark.slow
def test_pendulum_reaches_minus_200_within_10k_steps(tmp_path: Path):
    # Stable-Baselines3's SAC with default settings scored -184 at 5,000 and -172 at 10,000 steps
    # on this kind of machine. Ours is scored from the published version file, on seeds the run
    # never saw.
    torch.set_num_threads(1)  # deterministic arithmetic on a given machine
    env = make_env("Pendulum-v1")
    spec = task_spec_from_env(env, sac=tuned_config("Pendulum-v1"))
    result = train_local(env, spec, total_steps=10_000, seed=0, progress=False)
    assert result.sac.updates == 9_901  # utd 1 from step learning_starts = 100 on
    path = tmp_path / "v1.safetensors"
    digest = save_policy(path, result.sac.actor, spec.action_low, spec.action_high, version=1)
    pi = load_policy(path, sha256=digest)
    returns = evaluate(lambda o: pi.act(o, deterministic=True), make_env("Pendulum-v1"), 10, 50_000)
    assert np.mean(returns) >= -200, returns


@pytest.mark.slow
def test_pendulum_through_the_service_and_the_learner_process(tmp_path: Path):
    """The product's loop: a robot acts and logs over HTTP, the learner runs in its own process.

    The robot is paced to the learner's update-to-data ratio, as a real robot at its control
    rate would be: it waits whenever it is more than a little ahead of the updates its data
    allows. The policy scored is a published version file, loaded with load_policy.
    """
    import time

    import httpx

    from tests.servers import LearnerProcess, start_thread_service, write_task

    env = make_env("Pendulum-v1")
    spec = task_spec_from_env(env, sac=tuned_config("Pendulum-v1"))
    data = tmp_path / "data"
    service = start_thread_service(data, spec, policy_poll_s=0.02)
    learner = LearnerProcess(
        data, write_task(tmp_path / "task.json", spec), ROBOT_SAC_PUBLISH_EVERY="200"
    ).start()
    store = service.state.store
    cfg = spec.sac
    total_steps, slack = 12_000, 100
    try:
        with httpx.Client(base_url=service.url, timeout=30) as c:
            obs, _ = env.reset(seed=0)
            episode, step_in_episode, pending = 0, 0, []
            for t in range(total_steps):
                due = cfg.utd * (t - cfg.learning_starts) - slack
                while due > 0 and _updates(store) < due:
                    assert learner.alive(), learner.output()
                    time.sleep(0.02)
                answer = c.post("/v1/act", json={"obs": np.asarray(obs, float).tolist()}).json()
                action = np.asarray(answer["action"], np.float32)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                pending.append(
                    {
                        "robot_id": "pendulum-0",
                        "episode_id": f"ep{episode}",
                        "step": step_in_episode,
                        "obs": np.asarray(obs, float).tolist(),
                        "action": action.astype(float).tolist(),
                        "reward": float(reward),
                        "next_obs": np.asarray(next_obs, float).tolist(),
                        "terminated": bool(terminated),
                        "truncated": bool(truncated),
                        "policy_version": answer["policy_version"],
                    }
                )
                step_in_episode += 1
                if terminated or truncated:
                    obs, _ = env.reset()
                    episode, step_in_episode = episode + 1, 0
                else:
                    obs = next_obs
                if len(pending) >= 50 or terminated or truncated:
                    r = c.post("/v1/transitions", json={"transitions": pending})
                    assert r.status_code == 200 and r.json()["accepted"] == len(pending)
                    pending = []
        assert learner.terminate() == 0, learner.output()
        record = store.latest_policy()
        assert record is not None and record.updates >= 11_500
        pi = load_policy(store.policy_bytes(record), sha256=record.sha256)
        returns = evaluate(
            lambda o: pi.act(o, deterministic=True), make_env("Pendulum-v1"), 10, 50_000
        )
        assert np.mean(returns) >= -250, returns
    finally:
        learner.kill()
        service.stop()
