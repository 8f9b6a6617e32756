"""A glitching sensor must not end learning: screening, the update guard, rollback, faulted.

A reward of 3.4e38 is a finite float32, so the service logs it. The learner must quarantine the
row on its way into the replay buffer (after a restart too: the row stays in the log), never
take, publish or save a non-finite step, roll back to its last good state when its state turns
non-finite anyway, and, when that cannot cure it, report ``faulted`` instead of going on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac.config import SACConfig
from robot_sac.policy import load_policy
from robot_sac.services.learner import Learner
from robot_sac.services.learner.checkpoint import load_checkpoint
from robot_sac.settings import Settings
from robot_sac.store import Store, open_store
from tests.servers import CHEETAH, start_thread_service, transition

# HalfCheetah's sizes with small networks, so that a few hundred updates take a second.
SPEC = CHEETAH.model_copy(
    update={"sac": SACConfig(hidden=(32, 32), batch_size=32, learning_starts=64, utd=1.0)}
)
GLITCH = 3.4e38  # finite float32: the service's finite check lets it through


def ordinary(episode: str, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(int(episode[1:]))
    return [
        transition(
            "r1",
            episode,
            k,
            SPEC,
            obs=rng.standard_normal(17).tolist(),
            action=rng.uniform(-1, 1, 6).tolist(),
            reward=float(rng.standard_normal()),
            next_obs=rng.standard_normal(17).tolist(),
        )
        for k in range(n)
    ]


def tensors_of(value: Any) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_of(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in tensors_of(v)]
    return []


def assert_checkpoint_finite(path: Path) -> dict[str, Any]:
    saved = load_checkpoint(path)
    assert saved is not None
    floats = [t for t in tensors_of(saved["sac"]) if t.is_floating_point()]
    assert floats and all(bool(torch.isfinite(t).all()) for t in floats)
    return saved


def assert_every_version_loads(store: Store) -> int:
    records = store.list_policies()
    for record in records:
        load_policy(store.policy_bytes(record), sha256=record.sha256)  # refuses NaN and inf
    return len(records)


def assert_finite_status(status: dict[str, Any]) -> None:
    assert set(status["losses"]) == {"loss_actor", "loss_qvalue", "loss_alpha"}
    for value in (*status["losses"].values(), status["alpha"], status["q_mean"]):
        assert math.isfinite(value), status


def test_a_glitching_sensor_is_quarantined_and_learning_goes_on_across_a_restart(tmp_path: Path):
    data = tmp_path / "data"
    service = start_thread_service(data, SPEC)
    store = open_store(SPEC, data)
    try:
        c = service.client()
        batch = ordinary("e0", 200)
        batch[50] = {**batch[50], "reward": GLITCH}
        batch[120] = {**batch[120], "next_obs": [GLITCH, *batch[120]["next_obs"][1:]]}
        batch += ordinary("e1", 200)
        r = c.post("/v1/transitions", json={"transitions": batch})
        assert r.status_code == 200 and r.json()["accepted"] == 400, r.text
        logged = store.read_after(0, 1000)
        glitched = [
            int(p)
            for p in logged.position[(logged.reward > 1e30) | (logged.next_obs > 1e30).any(1)]
        ]
        assert len(glitched) == 2

        settings = Settings(data_dir=data, publish_every=50, checkpoint_every=100)
        learner = Learner(settings, SPEC, store, torch.device("cpu"), tensorboard=False)
        learner.start()
        learner.run(lambda: False, max_updates=300)
        learner.close()
        status = store.learner_status()
        assert status is not None and status["updates"] == 300
        assert assert_every_version_loads(store) == 1 + 300 // 50
        assert_finite_status(status)
        assert status["state"] == "running" and status["fault"] is None
        assert status["quarantined_rows"] == 2
        assert status["quarantined_positions"] == glitched
        assert status["replay_size"] == 398 and status["transitions_consumed"] == 398
        assert status["skipped_updates"] == 0 and status["rollbacks"] == 0
        saved = assert_checkpoint_finite(data / "learner" / "checkpoint.pt")
        assert saved["quarantined_rows"] == 2 and saved["quarantined_positions"] == glitched

        # A restart rebuilds the replay from the log, glitches included: they are screened again
        # (and not counted twice), and learning goes on, finite.
        restarted = Learner(settings, SPEC, store, torch.device("cpu"), tensorboard=False)
        restarted.start()
        assert len(restarted.replay) == 398
        assert float(restarted.replay.all().reward.abs().max()) < 1e6
        assert float(restarted.replay.all().next_obs.abs().max()) < 1e6
        r = c.post("/v1/transitions", json={"transitions": ordinary("e2", 100)})
        assert r.status_code == 200
        restarted.run(lambda: False, max_updates=400)
        restarted.close()
        status = store.learner_status()
        assert status is not None and status["updates"] == 400
        assert assert_every_version_loads(store) == 1 + 400 // 50
        assert_finite_status(status)
        assert status["quarantined_rows"] == 2 and status["quarantined_positions"] == glitched
        assert status["replay_size"] == 498
        assert_checkpoint_finite(data / "learner" / "checkpoint.pt")
    finally:
        service.stop()
        store.close()
