"""`robot-sac up` end to end (slow): the product a new user meets first must learn for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_sac.config import tuned_config
from robot_sac.policy import load_policy
from robot_sac.sim.envs import make_env
from robot_sac.store import open_existing
from robot_sac.train_local import rollout
from tests.servers import free_port


@pytest.mark.slow
def test_up_learns_panda_reach_in_6000_steps(tmp_path: Path):
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "robot_sac.cli",
        "up",
        "--env",
        "PandaReachDense-v3",
        "--robots",
        "2",
        "--steps",
        "6000",
        "--data-dir",
        str(data),
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done:" in done.stdout

    store = open_existing(data)
    try:
        assert store.transition_count() == 6000
        status = store.learner_status()
        cfg = tuned_config("PandaReachDense-v3")
        # the task's ratio after learning_starts (robots run a few steps ahead of the learner)
        assert status is not None and status.updates >= cfg.utd * (6000 - cfg.learning_starts) - 100
        record = store.latest_policy()
        assert record is not None and record.updates == status.updates
        policy = load_policy(store.policy_bytes(record), sha256=record.sha256)
    finally:
        store.close()
    # 20 deterministic episodes on seeds the run never used (robots were seeded 0 and 1)
    episodes = rollout(
        lambda obs: policy.act(obs, deterministic=True),
        make_env("PandaReachDense-v3"),
        20,
        1_000_000,
    )
    success = np.mean([e.success for e in episodes])
    assert success >= 0.9, f"success {success:.0%}: {episodes}"


def test_up_runs_with_the_tokens_in_the_environment(tmp_path: Path) -> None:
    """An operator who exported the tokens (as the README's Security section says) can still run
    `up`: robots act with the robot token, the live view and pacing read with the viewer's."""
    data = tmp_path / "data"
    env = {
        **os.environ,
        "ROBOT_SAC_ROBOT_TOKEN": "robot-token-0123456789",
        "ROBOT_SAC_OPERATOR_TOKEN": "operator-token-0123456789",
        "ROBOT_SAC_VIEWER_TOKEN": "viewer-token-0123456789",
    }
    cmd = [sys.executable, "-m", "robot_sac.cli", "up", "--env", "Pendulum-v1", "--steps", "300"]
    cmd += ["--data-dir", str(data), "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done: 300 transitions logged" in done.stdout
    service_log = (data / "logs" / "service.log").read_text()
    assert "no tokens configured" not in service_log  # the service did run with the tokens
    store = open_existing(data)
    try:
        assert store.transition_count() == 300
    finally:
        store.close()


def test_up_passes_demonstrations_and_interventions_to_its_robots(tmp_path: Path) -> None:
    """`up --demos 2 --intervene 1`: two demonstrations in all, then policy episodes the expert
    takes over when they struggle, each logged with its source."""
    from robot_sac.store.records import SOURCE_CODES

    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "robot_sac.cli", "up", "--env", "PandaReachDense-v3"]
    cmd += ["--steps", "300", "--demos", "2", "--intervene", "1.0"]
    cmd += ["--data-dir", str(data), "--port", str(free_port())]
    env = {**os.environ, "COLUMNS": "200"}  # the summary on one line
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = open_existing(data)
    try:
        rows = store.read_after(0, 10_000)
    finally:
        store.close()
    assert len(rows) == 300
    ends = rows.terminated | rows.truncated
    assert int(np.sum(ends & (rows.source == SOURCE_CODES["demo"]))) == 2
    demo, human = (int(np.sum(rows.source == SOURCE_CODES[s])) for s in ("demo", "human"))
    assert human > 0 and np.any(rows.source == SOURCE_CODES["policy"])
    # the summary counts the expert's transitions apart
    assert f"done: 300 transitions logged (demo {demo}, human {human})" in done.stdout
