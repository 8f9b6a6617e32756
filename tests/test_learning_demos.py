"""Learning from demonstrations through the whole loop (slow, seeded).

`robot-sac up` on the Panda reach with ten expert demonstrations first (logged with source
"demo"; half of each batch is drawn from them, RLPD's symmetric sampling) and three updates per
step. The goal (issue 17) is at least 90 % success by 1,500 environment steps in all,
demonstration steps included (they cost robot time too). The loop is asynchronous, so one seed
does not give one result: by hand (2026-11-30, seed 0, four runs) it scored 100, 100, 95 and
90 %; with three updates per step and no demonstrations, 45 and 100 %; with neither, 30 %. So
that CI stays green across that run-to-run spread, the test asks for 80 % over 40 unseen
episodes: it still fails for the loop without demonstrations about half the time, and for a
loop that does not learn from them at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_sac.policy import load_policy
from robot_sac.sim.envs import make_env
from robot_sac.store import open_existing
from robot_sac.train_local import EVAL_SEED, rollout
from tests.servers import free_port

ENV = "PandaReachDense-v3"
STEPS = 1500
DEMOS = 10


@pytest.mark.slow
def test_panda_reach_with_demonstrations_learns_by_1500_steps(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "robot_sac.cli", "up", "--env", ENV, "--robots", "2"]
    cmd += ["--steps", str(STEPS), "--demos", str(DEMOS), "--seed", "0", "--sac", '{"utd": 3}']
    cmd += ["--data-dir", str(data), "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    store = open_existing(data)
    try:
        assert store.transition_count() == STEPS
        by_source = store.transitions_by_source()
        assert by_source["demo"] > 0 and by_source["human"] == 0
        record = store.latest_policy()
        assert record is not None
        policy = load_policy(store.policy_bytes(record), sha256=record.sha256)
    finally:
        store.close()
    env = make_env(ENV)
    episodes = rollout(lambda obs: policy.act(obs, deterministic=True), env, 40, EVAL_SEED)
    success = float(np.mean([e.success for e in episodes]))
    assert success >= 0.8, f"success {success:.0%} at {STEPS} steps with {DEMOS} demonstrations"
