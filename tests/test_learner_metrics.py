"""What the learner reports about how learning keeps up: the update-to-data ratio it achieves
(``utd_effective``), how stale its view of the log is (``data_age_s``), the env steps it has
consumed, and its TensorBoard curves against updates and against env steps. In-process learners
on a real SQLite store, counts worked out by hand from the update-to-data budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.schemas import Transition
from robot_sac.services.learner import Learner
from robot_sac.services.learner.telemetry import BehindAlarm, UtdWindow
from robot_sac.settings import Settings
from robot_sac.store import Store, open_store
from tests.test_learner import TASK, transitions

# TASK: utd 1 after 200 learning-start transitions, so n transitions allow n - 200 updates.


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(TASK, tmp_path / "data")
    ensure_initial_policy(s)
    yield s
    s.close()


def make_learner(data: Path, store: Store, tensorboard: bool = False) -> Learner:
    # publishes only every 100 updates, never on a timer, so the test decides the versions
    settings = Settings(data_dir=data, publish_every=100, publish_seconds=1e6)
    learner = Learner(settings, TASK, store, torch.device("cpu"), tensorboard=tensorboard)
    learner.start()
    return learner


def test_the_window_compares_now_with_the_newest_mark_at_least_a_window_old() -> None:
    w = UtdWindow(window_s=30.0)  # keeps a mark at most every second
    w.observe(0.0, updates=0, consumed=300)
    w.observe(0.5, updates=50, consumed=350)  # within a second of the last mark: not kept
    assert w.ratio(updates=400, consumed=600) == pytest.approx(400 / 300)
    w.observe(10.0, updates=400, consumed=600)
    w.observe(31.0, updates=500, consumed=700)  # the mark at 10 s is not yet 30 s old
    assert w.ratio(updates=500, consumed=700) == pytest.approx(500 / 400)
    w.observe(45.0, updates=600, consumed=800)  # now the mark at 10 s is the reference
    assert w.ratio(updates=600, consumed=800) == pytest.approx(200 / 200)
    w.observe(100.0, updates=600, consumed=800)  # 30 s and more without a transition
    assert w.ratio(updates=600, consumed=800) is None
    assert w.ratio(updates=550, consumed=900) == 0.0  # a rollback: no negative ratio


def test_the_behind_alarm_warns_only_when_training_far_below_the_target() -> None:
    alarm = BehindAlarm(share=0.5, window_s=30.0, every_s=60.0)
    assert alarm.check(0.0, training=False, target=1.0, achieved=0.1) is None  # waiting
    assert alarm.check(10.0, training=True, target=1.0, achieved=0.1) is None  # just started
    assert alarm.check(39.0, training=True, target=1.0, achieved=0.1) is None  # < a window
    warning = alarm.check(40.0, training=True, target=1.0, achieved=0.45)
    assert warning is not None and "0.45" in warning and "50%" in warning
    assert alarm.check(90.0, training=True, target=1.0, achieved=0.1) is None  # said lately
    assert alarm.check(100.0, training=True, target=1.0, achieved=0.1) is not None
    assert alarm.check(200.0, training=True, target=1.0, achieved=0.5) is None  # at the share
    assert alarm.check(300.0, training=True, target=1.0, achieved=None) is None  # no new data
    assert alarm.check(400.0, training=True, target=0.0, achieved=0.0) is None  # unpaced
    alarm.check(500.0, training=False, target=1.0, achieved=0.1)  # paused: a fresh start after
    assert alarm.check(510.0, training=True, target=1.0, achieved=0.1) is None


def test_a_learner_behind_its_robots_says_so_in_its_log(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="robot_sac.learner")
    store.append(transitions(0, 300))
    learner = make_learner(tmp_path / "data", store)
    # The ratio over the learner's whole life (a window longer than the test), the alarm after
    # 0.2 s of training: the test's scale of the 30 s and 60 s a service uses.
    learner.utd_window = UtdWindow(window_s=1e6)
    learner.behind = BehindAlarm(window_s=0.2, every_s=60.0)
    try:
        learner.status()  # the window's first mark: 0 updates, the 300 steps consumed at start
        learner.run(lambda: False, max_updates=100)  # all 100 updates the data allows
        assert learner.status().state == "running"  # training from here
        assert not caplog.records  # keeping up: 100 updates for 100 steps past learning_starts
        store.append(transitions(300, 400))  # 400 new steps, and only 40 more updates
        learner.run(lambda: False, max_updates=140)
        time.sleep(0.25)
        status = learner.status()
        # about 140 updates for the 400 steps since the window's first mark (a pass may run a
        # few past 140)
        assert status.utd_effective is not None and 0.3 < status.utd_effective < 0.4
        assert any("robots log faster than it trains" in r.message for r in caplog.records)
    finally:
        learner.close()


def test_utd_effective_env_steps_and_data_age_on_a_controlled_run(
    tmp_path: Path, store: Store
) -> None:
    store.append(transitions(0, 300))
    learner = make_learner(tmp_path / "data", store)  # its window starts at 300 env steps
    try:
        status = learner.status()
        assert status.env_steps == status.transitions_consumed == 300
        assert status.utd_effective is None  # nothing consumed since the window began
        # 300 more: 600 - 200 = 400 updates are due, all made while 300 transitions came in
        store.append(transitions(300, 300))
        learner.run(lambda: False, max_updates=400)
        learner.write_status()
        status = store.learner_status()
        assert status is not None
        assert status.updates == 400 and status.env_steps == 600
        assert status.utd == 1.0
        assert status.utd_effective == pytest.approx(400 / 300, abs=1e-4)  # catching up
        # 100 more, 100 more updates: over the window 500 updates for 400 transitions (the
        # learner's lifetime ratio, 500 / 600, would be wrong)
        store.append(transitions(600, 100))
        learner.run(lambda: False, max_updates=500)
        assert learner.status().utd_effective == pytest.approx(500 / 400, abs=1e-4)

        # data age: the learner has read the whole log lately, and it grows while it does not look
        fresh = learner.status().data_age_s
        assert fresh is not None and 0.0 <= fresh < 1.0
        time.sleep(0.6)
        stale = learner.status().data_age_s
        assert stale >= 0.6
        # a pull is due: it reads the log again and has all of it. No robot sent anything: idle
        # robots do not age it, the learner has all there is
        learner.step()
        assert learner.status().data_age_s < 0.3
        store.append(transitions(700, 1))
        time.sleep(0.05)
        learner.step()
        assert learner.status().data_age_s < 0.3 and learner.status().env_steps == 701
    finally:
        learner.close()


def test_data_age_is_reported_from_the_replay_rebuild_and_none_before(
    tmp_path: Path, store: Store
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    learner = Learner(settings, TASK, store, torch.device("cpu"), tensorboard=False)
    assert learner.status().data_age_s is None  # it has not read the log yet
    learner.start()  # rebuilding the replay buffer reads the log to its end
    age = learner.status().data_age_s
    assert age is not None and 0.0 <= age < 1.0
    learner.close()


def with_version(batch: list[Transition], version: int) -> list[Transition]:
    return [t.model_copy(update={"policy_version": version}) for t in batch]


def episode_mean(batch: list[Transition]) -> float:
    """Mean return of the episodes in ``batch`` (100 steps each, as :func:`transitions` makes)."""
    returns = [sum(t.reward for t in batch[i : i + 100]) for i in range(0, len(batch), 100)]
    return sum(returns) / len(returns)


def test_tensorboard_has_each_curve_against_updates_and_against_env_steps(
    tmp_path: Path, store: Store
) -> None:
    data = tmp_path / "data"
    v0 = transitions(0, 300)  # three episodes by version 0, the initial policy
    store.append(v0)
    learner = make_learner(data, store, tensorboard=True)
    # 100 updates: version 1 at 300 env steps; then an episode by each new version, 100 updates
    # after each: version 2 at 400 env steps, version 3 at 500
    learner.run(lambda: False, max_updates=100)
    learner.write_status()
    v1 = with_version(transitions(300, 100), 1)
    store.append(v1)
    learner.run(lambda: False, max_updates=200)
    learner.write_status()
    v2 = with_version(transitions(400, 100), 2)
    store.append(v2)
    learner.run(lambda: False, max_updates=300)
    learner.close()  # flushes the event files
    assert [r.version for r in store.list_policies()] == [0, 1, 2, 3]

    events = EventAccumulator(str(data / "learner" / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/loss_actor", "sac/alpha", "data/utd_effective", "episode/mean_return"):
        assert tag in tags and f"env_steps/{tag}" in tags

    def curve(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    # the same points, one curve against updates, the other against env steps
    by_updates, by_env_steps = curve("loss/loss_actor"), curve("env_steps/loss/loss_actor")
    assert [v for _, v in by_updates] == [v for _, v in by_env_steps]
    pairs = [(u, e) for (u, _), (e, _) in zip(by_updates, by_env_steps, strict=True)]
    assert {e for _, e in pairs} == {300, 400, 500}
    assert all(u <= e - 200 for u, e in pairs)  # the update-to-data budget, utd 1
    assert pairs[-1] == (300, 500)

    # episode return: each version's episodes at the updates and the env steps of its publish
    # (version 3 is the newest: its episodes are not in yet)
    means = [episode_mean(v0), episode_mean(v1), episode_mean(v2)]
    returns = curve("episode/mean_return")
    assert [u for u, _ in returns] == [0, 100, 200]
    assert [v for _, v in returns] == pytest.approx(means, rel=1e-5)
    returns = curve("env_steps/episode/mean_return")
    assert [e for e, _ in returns] == [0, 300, 400]
    assert [v for _, v in returns] == pytest.approx(means, rel=1e-5)
