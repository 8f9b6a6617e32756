"""`robot-sac learn` with its live status line (the default), as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.store import open_store
from tests.servers import write_task

TASK = TaskSpec(
    name="small",
    obs_dim=3,
    action_low=(-2.0,),
    action_high=(2.0,),
    sac=SACConfig(hidden=(16, 16), batch_size=16, learning_starts=50, utd=1.0),
)


def test_learn_shows_its_status_line_and_stops_after_max_updates(tmp_path: Path):
    data, task = tmp_path / "data", write_task(tmp_path / "task.json", TASK)
    store = open_store(TASK, data)
    try:
        ensure_initial_policy(store)
        rng = np.random.default_rng(0)
        store.append(
            [
                Transition(
                    robot_id="r",
                    episode_id=f"e{k // 50}",
                    step=k % 50,
                    obs=rng.standard_normal(3).tolist(),
                    action=[float(rng.uniform(-2, 2))],
                    reward=float(rng.standard_normal()),
                    next_obs=rng.standard_normal(3).tolist(),
                    terminated=False,
                    truncated=k % 50 == 49,
                )
                for k in range(200)
            ]
        )
    finally:
        store.close()
    cmd = [sys.executable, "-m", "robot_sac.cli", "learn", "--task", str(task)]
    cmd += ["--data-dir", str(data), "--max-updates", "30", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    stopped = re.search(r"learner stopped at (\d+) updates", done.stdout)
    assert stopped is not None and int(stopped.group(1)) >= 30, done.stdout
    # the live line, with its losses (rich prints its last state when the output is no terminal)
    line = re.search(
        r"running updates (\d+) \(\d+/s\) · replay 200 · version \d+ · actor", done.stdout
    )
    assert line is not None, done.stdout
