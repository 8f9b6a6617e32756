"""The in-process loop: termination vs truncation, update counts, the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from robot_sac.config import SACConfig
from robot_sac.policy import load_policy
from robot_sac.schemas import TaskSpec
from robot_sac.train_local import ActionScaler, train_local


class Walk:
    """x moves by the action; the episode terminates past x = 1, is truncated after 20 steps."""

    def __init__(self) -> None:
        self.x, self.t = 0.0, 0
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.x, self.t = float(self.rng.uniform(-0.5, 0.5)), 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        assert -0.5 <= float(action[0]) <= 0.5, "actions must arrive in robot units"
        self.x += float(action[0])
        self.t += 1
        terminated = self.x > 1.0
        return np.array([self.x], np.float32), -abs(self.x), terminated, self.t >= 20, {}


def test_updates_start_at_learning_starts():
    spec = TaskSpec(
        obs_dim=1,
        action_low=(-0.5,),
        action_high=(0.5,),
        sac=SACConfig(hidden=(8,), batch_size=8, learning_starts=400),
    )
    torch.manual_seed(0)
    result = train_local(Walk(), spec, total_steps=400, seed=0, progress=False)
    assert result.sac.updates == 1  # learning starts on the last step
    # 400 random steps: episodes end by termination (x > 1) or truncation (20 steps)
    assert len(result.episode_returns) > 20


def test_replay_rows_mark_terminated_only_on_termination(monkeypatch):
    stored = []
    from robot_sac import train_local as module

    original_add = module.ReplayBuffer.add

    def spy(self, obs, action, reward, next_obs, terminated):
        stored.append((float(np.asarray(next_obs).reshape(-1)[0]), float(terminated)))
        return original_add(self, obs, action, reward, next_obs, terminated)

    monkeypatch.setattr(module.ReplayBuffer, "add", spy)
    spec = TaskSpec(
        obs_dim=1,
        action_low=(-0.5,),
        action_high=(0.5,),
        sac=SACConfig(hidden=(8,), batch_size=8, learning_starts=1000),
    )
    train_local(Walk(), spec, total_steps=300, seed=1, progress=False)
    for x_next, terminated in stored:
        assert terminated == float(x_next > 1.0)
    assert any(t == 1.0 for _, t in stored) and any(t == 0.0 for _, t in stored)


def test_action_scaler_round_trip():
    spec = TaskSpec(obs_dim=1, action_low=(-2.0, 0.0), action_high=(2.0, 10.0))
    s = ActionScaler(spec)
    unit = np.array([[-1.0, 1.0], [0.0, 0.0], [0.5, -0.5]], np.float32)
    robot = s.to_robot(unit)
    np.testing.assert_allclose(robot, [[-2.0, 10.0], [0.0, 5.0], [1.0, 2.5]])
    np.testing.assert_allclose(s.to_unit(robot), unit, atol=1e-6)


def test_cli_train_local_writes_a_loadable_policy(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "robot_sac.cli",
        "train-local",
        "--env",
        "Pendulum-v1",
        "--steps",
        "300",
        "--eval-every",
        "0",
        "--eval-episodes",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--config",
        '{"batch_size": 64}',
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["updates"] == 201 and summary["config"]["batch_size"] == 64
    pi = load_policy(out / "policy.safetensors", sha256=summary["sha256"])
    assert pi.obs_dim == 3 and pi.action_dim == 1 and pi.info.updates == 201


def test_cli_rejects_bad_config_with_a_clear_message(tmp_path: Path):
    cmd = [
        sys.executable,
        "-m",
        "robot_sac.cli",
        "train-local",
        "--steps",
        "10",
        "--out",
        str(tmp_path),
        "--config",
        '{"gamma": 7}',
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--config" in done.stderr and "gamma" in done.stderr
