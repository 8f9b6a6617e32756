"""A glitching sensor must not end learning: screening, the update guard, rollback, faulted.

A reward of 3.4e38 is a finite float32, so the service logs it. The learner must quarantine the
row on its way into the replay buffer (after a restart too: the row stays in the log), never
take, publish or save a non-finite step, roll back to its last good state when its state turns
non-finite anyway, and, when that cannot cure it, report ``faulted`` instead of going on.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.policy import load_policy
from robot_sac.services.learner import Learner
from robot_sac.services.learner.checkpoint import load_checkpoint, save_checkpoint
from robot_sac.services.learner.learner import MAX_SKIPPED_IN_A_ROW
from robot_sac.settings import Settings
from robot_sac.store import Store, open_store
from tests.servers import CHEETAH, start_thread_service, transition
from tests.test_learner import TASK, transitions

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


def assert_finite_status(status: LearnerStatus) -> None:
    assert set(status.losses) == {"loss_actor", "loss_qvalue", "loss_alpha"}
    for value in (*status.losses.values(), status.alpha, status.q_mean):
        assert value is not None and math.isfinite(value), status


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

        settings = Settings(
            data_dir=data, publish_every=50, publish_seconds=1e6, checkpoint_every=100
        )
        learner = Learner(settings, SPEC, store, torch.device("cpu"), tensorboard=False)
        learner.start()
        learner.run(lambda: False, max_updates=300)
        learner.close()
        status = store.learner_status()
        assert status is not None and status.updates == 300
        assert assert_every_version_loads(store) == 1 + 300 // 50
        assert_finite_status(status)
        assert status.state == "running" and status.fault is None
        assert status.quarantined_rows == 2
        assert status.quarantined_positions == glitched
        assert status.replay_size == 398 and status.transitions_consumed == 398
        assert status.skipped_updates == 0 and status.rollbacks == 0
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
        assert status is not None and status.updates == 400
        assert assert_every_version_loads(store) == 1 + 400 // 50
        assert_finite_status(status)
        assert status.quarantined_rows == 2 and status.quarantined_positions == glitched
        assert status.replay_size == 498
        assert_checkpoint_finite(data / "learner" / "checkpoint.pt")
    finally:
        service.stop()
        store.close()


# --- rollback and the faulted state -------------------------------------------------------------
# A non-finite state cannot arise quickly from data once rows are screened and steps guarded, so
# these tests corrupt the learner's weights in-process, as a hardware fault or a bug would.


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    data = tmp_path / "data"
    store = open_store(TASK, data)
    ensure_initial_policy(store)
    store.append(transitions(0, 1500))  # utd 1 after 200 learning starts: 1300 updates due
    yield data, store
    store.close()


def small_learner(data: Path, store: Store) -> Learner:
    settings = Settings(data_dir=data, publish_every=50, publish_seconds=1e6, checkpoint_every=100)
    learner = Learner(settings, TASK, store, torch.device("cpu"), tensorboard=False)
    learner.start()
    return learner


def corrupt(tensor: torch.Tensor, value: float = math.nan) -> None:
    with torch.no_grad():
        tensor.view(-1)[0] = value


def copies(params: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_non_finite_state_is_not_published_the_learner_rolls_back_then_faults(small):
    data, store = small
    learner = small_learner(data, store)
    learner.run(lambda: False, max_updates=100)  # versions at 50 and 100, a checkpoint at 100
    assert [p.updates for p in store.list_policies()] == [0, 50, 100]
    good_actor, good_critic = (
        copies(learner.sac.actor.parameters()),
        copies(learner.sac.critic.parameters()),
    )
    learner.run(lambda: False, max_updates=120)

    # publish() refuses a non-finite actor and restores the state of the last good version
    corrupt(next(learner.sac.actor.parameters()))
    assert learner.publish() is None
    assert [p.updates for p in store.list_policies()] == [0, 50, 100]
    assert learner.sac.updates == 100 and learner.counters.rollbacks == 1
    for good, now in zip(good_actor, learner.sac.actor.parameters(), strict=True):
        assert torch.equal(good, now)
    for good, now in zip(good_critic, learner.sac.critic.parameters(), strict=True):
        assert torch.equal(good, now)
    assert learner.sac.is_finite() and learner.fault is None

    learner.run(lambda: False, max_updates=150)  # a good version at 150: the rollback cured it
    assert [p.updates for p in store.list_policies()] == [0, 50, 100, 150]

    # in the loop: a NaN critic makes every step skip, and the publish at 200 rolls back to 150;
    # learning goes on from there and publishes a finite version at 200, then checkpoints
    corrupt(next(learner.sac.critic.parameters()))
    learner.run(lambda: False, max_updates=200)
    assert learner.counters.rollbacks == 2 and float(learner.sac.skipped_updates) == 50
    assert [p.updates for p in store.list_policies()] == [0, 50, 100, 150, 200]
    assert assert_every_version_loads(store) == 5
    ckpt = data / "learner" / "checkpoint.pt"
    assert assert_checkpoint_finite(ckpt)["sac"]["updates"] == 200
    saved = file_digest(ckpt)

    # checkpoint() refuses to save a non-finite state: it rolls back, the file stays the good one
    corrupt(learner.sac.log_alpha, math.inf)
    assert learner.checkpoint() is False
    assert file_digest(ckpt) == saved and learner.counters.rollbacks == 3
    assert learner.sac.is_finite() and learner.fault is None
    # the same again before any good publish or checkpoint: the rollback did not cure it
    corrupt(next(learner.sac.critic_target.parameters()))
    assert learner.publish() is None
    assert learner.fault is not None and "rollback" in learner.fault
    learner.write_status()
    status = store.learner_status()
    assert status is not None
    assert status.state == "faulted" and status.fault == learner.fault
    assert status.rollbacks == 3 and status.skipped_updates == 50

    # faulted: no more updates, versions or checkpoints, but the status goes on (heartbeat)
    versions, updates = len(store.list_policies()), learner.sac.updates
    beat = status.heartbeat
    deadline = time.monotonic() + 0.5
    learner.run(lambda: time.monotonic() > deadline, max_updates=1000)
    learner.close()
    status = store.learner_status()
    assert status is not None and status.state == "faulted" and status.heartbeat > beat
    assert learner.sac.updates == updates == status.updates
    assert len(store.list_policies()) == versions and file_digest(ckpt) == saved
    assert assert_every_version_loads(store) == versions


def test_updates_skipped_in_a_row_roll_a_finite_but_broken_state_back(small):
    data, store = small
    learner = small_learner(data, store)
    learner.run(lambda: False, max_updates=100)
    good_critic = copies(learner.sac.critic.parameters())
    # finite, yet every batch now makes absurd gradients: the guard skips every step
    first_layer = next(learner.sac.critic.parameters())
    with torch.no_grad():
        first_layer[0, 0].fill_(1e20)
    deadline = time.monotonic() + 30
    learner.run(lambda: learner.counters.rollbacks > 0 or time.monotonic() > deadline)
    assert learner.counters.rollbacks == 1 and learner.fault is None
    assert float(learner.sac.skipped_updates) >= MAX_SKIPPED_IN_A_ROW
    # back to the state of the last version published before the fault (at 100 updates), not
    # to one published while every step was skipped
    assert learner.sac.updates == 100
    for good, now in zip(good_critic, learner.sac.critic.parameters(), strict=True):
        assert torch.equal(good, now)
    skipped = float(learner.sac.skipped_updates)
    learner.run(lambda: False, max_updates=learner.sac.updates + 100)
    assert float(learner.sac.skipped_updates) == skipped and learner.sac.is_finite()
    learner.close()
    assert assert_every_version_loads(store) == len(store.list_policies())
    status = store.learner_status()
    assert status is not None and status.state == "running"
    assert status.rollbacks == 1 and status.skipped_updates == skipped


def test_checkpoints_without_the_new_counters_load_and_a_non_finite_one_is_not_resumed(small):
    data, store = small
    learner = small_learner(data, store)
    learner.run(lambda: False, max_updates=100)
    learner.close()
    ckpt = data / "learner" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    assert state is not None
    new_keys = ("quarantined_rows", "quarantined_positions", "skipped_updates", "rollbacks")
    old = {k: v for k, v in state.items() if k not in new_keys}
    save_checkpoint(ckpt, old)  # as a learner without screening and guard wrote it
    resumed = small_learner(data, store)
    status = resumed.status()
    assert resumed.sac.updates == 100 and resumed.sac.is_finite()
    assert [getattr(status, k) for k in new_keys] == [0, [], 0, 0]

    # a checkpoint that such a learner saved after the poison: its weights are not resumed
    corrupt(old["sac"]["critic"][next(iter(old["sac"]["critic"]))])
    save_checkpoint(ckpt, old)
    restarted = small_learner(data, store)
    assert restarted.sac.is_finite() and restarted.counters.rollbacks == 1
    assert restarted.sac.updates == 100  # the counters are kept: versions stay in order
    served = load_policy(store.policy_bytes(store.latest_policy()))  # type: ignore[arg-type]
    for a, b in zip(served.actor.parameters(), restarted.sac.actor.parameters(), strict=True):
        assert torch.equal(a, b)  # it starts from the served actor
    restarted.run(lambda: False, max_updates=150)
    restarted.close()
    assert [p.updates for p in store.list_policies()] == [0, 50, 100, 150]
    assert assert_every_version_loads(store) == 4
    assert_checkpoint_finite(ckpt)


def test_a_skipped_updates_infinite_losses_are_written_as_null(small: tuple[Path, Store]) -> None:
    """JSON (and PostgreSQL's JSON) has no infinity: the status row says null for such a loss."""
    data, store = small
    learner = small_learner(data, store)
    learner.last_losses = {
        "loss_qvalue": torch.tensor(math.inf),
        "loss_actor": torch.tensor(0.25),
        "loss_alpha": torch.tensor(math.nan),
        "alpha": torch.tensor(0.1),
    }
    status = learner.status()
    assert status.losses == {"loss_actor": 0.25, "loss_qvalue": None, "loss_alpha": None}
    learner.write_status()
    with sqlite3.connect(data / "store.sqlite") as conn:
        (text,) = conn.execute("SELECT status FROM learner_status").fetchone()
    row = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the status row"))
    assert row["losses"]["loss_qvalue"] is None and row["alpha"] == pytest.approx(0.1)
