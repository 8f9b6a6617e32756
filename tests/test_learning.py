"""Learning, end to end in one process (slow): SAC must actually solve a control task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robot_sac.config import tuned_config
from robot_sac.policy import load_policy, save_policy
from robot_sac.train_local import evaluate, train_local

gym = pytest.importorskip("gymnasium")
from robot_sac.sim.envs import make_env, task_spec_from_env  # noqa: E402


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
