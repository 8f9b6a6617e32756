"""The learner process: consume the log, publish, survive kill -9, obey pause, stop cleanly; and
version retention: after each publish only the newest, the pinned and the served versions stay."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.policy import load_policy
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.services.learner import Learner
from robot_sac.settings import Settings
from robot_sac.store import Store, StoreUnavailable, open_store
from tests.servers import LearnerProcess, start_thread_service, write_task

# A small task so the tests are quick: 3 observations, 1 action in [-2, 2].
TASK = TaskSpec(
    name="small",
    obs_dim=3,
    action_low=(-2.0,),
    action_high=(2.0,),
    sac=SACConfig(hidden=(32, 32), batch_size=32, learning_starts=200, utd=1.0),
)
FAST = {"ROBOT_SAC_PUBLISH_EVERY": "100", "ROBOT_SAC_CHECKPOINT_EVERY": "300"}


def transitions(start: int, n: int, robot: str = "producer") -> list[Transition]:
    rng = np.random.default_rng(start)
    return [
        Transition(
            robot_id=robot,
            episode_id=f"e{k // 100}",
            step=k % 100,
            obs=rng.standard_normal(3).tolist(),
            action=[float(rng.uniform(-2, 2))],
            reward=float(rng.standard_normal()),
            next_obs=rng.standard_normal(3).tolist(),
            terminated=False,
            truncated=k % 100 == 99,
            policy_version=0,
        )
        for k in range(start, start + n)
    ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def updates(store: Store) -> int:
    status = store.learner_status()
    return -1 if status is None else int(status.updates)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, Store]]:
    data = tmp_path / "data"
    task = write_task(tmp_path / "task.json", TASK)
    store = open_store(TASK, data)
    ensure_initial_policy(store)
    yield data, task, store
    store.close()


def test_learner_consumes_the_log_and_the_service_serves_its_versions(setup, tmp_path: Path):
    data, task, store = setup
    service = start_thread_service(data, TASK, policy_poll_s=0.02)
    learner = LearnerProcess(data, task, **FAST).start()
    try:
        store.append(transitions(0, 1000))
        # utd 1 after 200 learning-start transitions: 800 updates are due, no more
        wait_for(lambda: updates(store) >= 800, 120, "800 updates")
        time.sleep(1.5)
        assert updates(store) == 800, "the learner ran past its update-to-data budget"
        versions = [p.version for p in store.list_policies()]
        assert len(versions) >= 8 and versions == sorted(versions)
        status = store.learner_status()
        assert status is not None
        assert status.replay_size == 1000 and status.transitions_consumed == 1000
        assert set(status.losses) == {"loss_actor", "loss_qvalue", "loss_alpha"}
        # the service follows: the newest version answers robots
        c = service.client()
        newest = versions[-1]
        wait_for(
            lambda: (
                c.post("/v1/act", json={"obs": [0.0, 0.0, 0.0]}).json()["policy_version"] == newest
            ),
            5,
            "the service to serve the newest version",
        )
        view = c.get("/v1/admin/status").json()["learner"]
        assert view["state"] == "running" and view["updates"] == 800
        metrics = c.get("/metrics").text
        assert "robot_sac_learner_updates 800.0" in metrics
        assert "robot_sac_learner_up 1.0" in metrics
        # more data, more updates
        store.append(transitions(1000, 300))
        wait_for(lambda: updates(store) >= 1100, 60, "1100 updates after more data")
        assert (data / "learner" / "tb").is_dir() and any((data / "learner" / "tb").iterdir())
    finally:
        learner.kill()
        service.stop()


def test_kill_9_then_restart_resumes_and_never_reuses_a_version(setup):
    data, task, store = setup
    service = start_thread_service(data, TASK, policy_poll_s=0.02)
    failures: list[str] = []
    answered: list[int] = []
    stop = threading.Event()

    def robot() -> None:  # acts throughout, the outage included
        with httpx.Client(base_url=service.url, timeout=10) as c:
            while not stop.is_set():
                r = c.post("/v1/act", json={"obs": [0.1, 0.2, 0.3]})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answered.append(r.json()["policy_version"])
                time.sleep(0.01)

    actor = threading.Thread(target=robot)
    actor.start()
    learner = LearnerProcess(data, task, **FAST).start()
    try:
        store.append(transitions(0, 3000))
        # wait for a checkpoint (every 300 updates) and some more progress after it
        ckpt = data / "learner" / "checkpoint.pt"
        wait_for(lambda: ckpt.exists() and updates(store) >= 700, 180, "a checkpoint")
        before_versions = [p.version for p in store.list_policies()]
        learner.kill()  # SIGKILL mid-run: no shutdown handler
        import torch

        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        checkpoint_updates = saved["sac"]["updates"]
        time.sleep(1.0)  # the outage: robots keep acting on the last served version
        restarted = LearnerProcess(data, task, **FAST).start()
        wait_for(lambda: updates(store) > checkpoint_updates + 200, 180, "progress after restart")
        status = store.learner_status()
        assert status is not None
        assert status.replay_size == 3000  # rebuilt from the log
        assert status.updates >= checkpoint_updates
        wait_for(lambda: len(store.list_policies()) > len(before_versions), 60, "a new version")
        after = [p.version for p in store.list_policies()]
        assert after == sorted(after) and len(set(after)) == len(after)
        assert max(after) > max(before_versions)
        restarted.terminate()
    finally:
        stop.set()
        actor.join()
        learner.kill()
        service.stop()
    assert failures == [] and len(answered) > 50


def test_pause_stops_updates_and_publishing_and_resume_restarts_them(setup):
    data, task, store = setup
    learner = LearnerProcess(data, task, ROBOT_SAC_PUBLISH_EVERY="50").start()
    try:
        store.append(transitions(0, 200))
        wait_for(lambda: updates(store) >= 0, 60, "the learner to start")
        # keep feeding so there is always work to do
        feeding = threading.Event()

        def feed() -> None:
            k = 200
            while not feeding.is_set():
                store.append(transitions(k, 20))
                k += 20
                time.sleep(0.1)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            wait_for(lambda: updates(store) >= 100, 120, "learning to start")
            store.update_control(learner_paused=True)
            time.sleep(1.0)  # it must stop within a second
            frozen_updates = updates(store)
            frozen_version = store.latest_policy().version  # type: ignore[union-attr]
            time.sleep(2.0)
            assert updates(store) == frozen_updates
            assert store.latest_policy().version == frozen_version  # type: ignore[union-attr]
            assert store.learner_status().state == "paused"  # type: ignore[union-attr]
            store.update_control(learner_paused=False)
            wait_for(lambda: updates(store) > frozen_updates + 50, 60, "updates after resume")
            wait_for(
                lambda: store.latest_policy().version > frozen_version,  # type: ignore[union-attr]
                60,
                "a version after resume",
            )
        finally:
            feeding.set()
            feeder.join()
    finally:
        learner.kill()


def test_sigterm_checkpoints_publishes_and_exits_0(setup):
    data, task, store = setup
    learner = LearnerProcess(data, task, ROBOT_SAC_PUBLISH_EVERY="100000").start()
    store.append(transitions(0, 600))
    wait_for(lambda: updates(store) >= 400, 120, "400 updates")
    assert not (data / "learner" / "checkpoint.pt").exists()
    versions_before = len(store.list_policies())
    assert learner.terminate() == 0, learner.output()
    import torch

    saved = torch.load(data / "learner" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["sac"]["updates"] == 400
    # what it learnt since its last version was published on the way out
    assert len(store.list_policies()) == versions_before + 1
    assert store.latest_policy().updates == 400  # type: ignore[union-attr]


# --- version retention ----------------------------------------------------------------------------
# In-process learners (as in test_learner_poison.py) against a real SQLite store: 600 transitions
# after 200 learning starts make 400 updates, a version every 20: twenty publishes.


def retaining_learner(data: Path, store: Store, **settings: Any) -> Learner:
    cfg = Settings(data_dir=data, publish_every=20, keep_versions=3, keep_every=0, **settings)
    learner = Learner(cfg, TASK, store, torch.device("cpu"), tensorboard=False)
    learner.start()
    return learner


def test_the_learner_keeps_only_the_newest_versions_and_the_pinned_and_served_ones(setup):
    data, _, store = setup
    store.append(transitions(0, 600))
    store.report_served("replica-1", 0)  # a replica serving version 0, as a service reports
    learner = retaining_learner(data, store)
    published: list[int] = []
    pinned: set[int] = set()
    while learner.sac.updates < 400:
        learner.run(lambda: False, max_updates=learner.sac.updates + 20)
        newest = store.latest_policy()
        assert newest is not None
        v = newest.version
        published.append(v)
        # after every publish: the newest 3, the served one and the pinned one, nothing more
        expected = {max(0, v - 2), max(0, v - 1), v, 0} | pinned
        assert [r.version for r in store.list_policies()] == sorted(expected)
        if v == 5:
            store.update_control(mode="pinned", pinned_version=5)  # an operator pins 5
            pinned.add(5)
    learner.close()
    assert published == list(range(1, 21))  # twenty publishes, every one numbered anew
    assert [r.version for r in store.list_policies()] == [0, 5, 18, 19, 20]
    files = {p.name for p in (data / "policies").iterdir()}
    assert files == {f"v{v}.safetensors" for v in (0, 5, 18, 19, 20)}
    for record in store.list_policies():
        load_policy(store.policy_bytes(record), sha256=record.sha256)


def test_a_store_error_while_pruning_is_logged_and_learning_goes_on(
    setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    data, _, store = setup
    store.append(transitions(0, 600))
    learner = retaining_learner(data, store)

    def refuse(*args: Any, **kwargs: Any) -> list[int]:
        raise StoreUnavailable("disk I/O error (simulated)")

    monkeypatch.setattr(store, "prune_policies", refuse)
    with caplog.at_level(logging.WARNING, logger="robot_sac.learner"):
        learner.run(lambda: False, max_updates=200)
    assert learner.sac.updates == 200 and learner.fault is None
    assert [r.version for r in store.list_policies()] == list(range(11))  # none pruned
    assert "could not delete old policy versions" in caplog.text
    assert "simulated" in caplog.text
    monkeypatch.undo()  # the store answers again: the next publish prunes the backlog
    with caplog.at_level(logging.INFO, logger="robot_sac.learner"):
        learner.run(lambda: False, max_updates=220)
    learner.close()
    assert [r.version for r in store.list_policies()] == [9, 10, 11]
    assert "retention: deleted 9 policy versions (0 to 8)" in caplog.text
