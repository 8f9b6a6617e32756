"""Holding one robot and not the others, and the robots the operator sees.

Real HTTP over loopback against a service on a real SQLite store; a second process holds the
store's write lock where a test needs the store busy.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import StoreLock, ThreadService, start_thread_service, transition
from tests.test_service_api import ACTION_DIM, OBS, assert_error, metric

SAFE = [0.0] * ACTION_DIM


def act(c: httpx.Client, robot: str | None, deterministic: bool = True) -> dict:
    body: dict = {"obs": OBS, "deterministic": deterministic}
    if robot is not None:
        body["robot_id"] = robot
    r = c.post("/v1/act", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_robot_held_alone_gets_the_safe_action_and_the_others_act_on(
    service: ThreadService,
) -> None:
    c = service.client()
    r = c.post("/v1/admin/hold", json={"robot_id": "arm-1"})
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["hold"] is False and status["held_robots"] == ["arm-1"]
    assert status["hold_persisted"] is True
    assert service.state.store.control().held_robots == {"arm-1"}

    assert act(c, "arm-1") == {"action": SAFE, "policy_version": 0, "hold": True}
    other = act(c, "arm-2")
    assert other["hold"] is False and other["action"] != SAFE
    assert act(c, None)["hold"] is False  # an act that names no robot is not that robot
    batch = c.post("/v1/act/batch", json={"obs": [OBS, OBS], "robot_id": "arm-1"}).json()
    assert batch["actions"] == [SAFE, SAFE] and batch["hold"] is True
    batch = c.post("/v1/act/batch", json={"obs": [OBS, OBS], "robot_id": "arm-2"}).json()
    assert batch["hold"] is False
    assert metric(c.get("/metrics").text, "robot_sac_held_robots") == 1.0
    assert metric(c.get("/metrics").text, "robot_sac_hold") == 0.0

    r = c.post("/v1/admin/release", json={"robot_id": "arm-1"})
    assert r.status_code == 200, r.text
    assert r.json()["held_robots"] == []
    assert act(c, "arm-1")["hold"] is False
    assert service.state.store.control().held_robots == frozenset()


def test_the_hold_for_all_and_a_robots_own_hold_are_separate(service: ThreadService) -> None:
    c = service.client()
    c.post("/v1/admin/hold", json={"robot_id": "arm-1"})
    assert c.post("/v1/admin/hold").json()["hold"] is True
    assert act(c, "arm-2")["hold"] is True
    # Releasing every robot ends the hold for all; arm-1's own hold was not named and stays.
    status = c.post("/v1/admin/release").json()
    assert status["hold"] is False and status["held_robots"] == ["arm-1"]
    assert act(c, "arm-1")["hold"] is True and act(c, "arm-2")["hold"] is False


def test_a_robots_hold_survives_a_restart(tmp_path: Path) -> None:
    svc = start_thread_service(tmp_path / "data")
    assert svc.client().post("/v1/admin/hold", json={"robot_id": "arm-1"}).status_code == 200
    svc.stop()
    again = start_thread_service(tmp_path / "data")
    try:
        c = again.client()
        assert act(c, "arm-1")["hold"] is True and act(c, "arm-2")["hold"] is False
        assert c.get("/v1/admin/status").json()["held_robots"] == ["arm-1"]
    finally:
        again.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_robots_hold_reaches_another_service_on_the_same_store(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # Two replicas: on one data directory (SQLite), or two hosts' directories and one database.
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
        first = start_thread_service(tmp_path / "a", store_url=url, policy_poll_s=1.0)
        second = start_thread_service(tmp_path / "b", store_url=url, policy_poll_s=1.0)
    else:
        first = start_thread_service(tmp_path / "data", policy_poll_s=0.1)
        second = start_thread_service(tmp_path / "data", policy_poll_s=0.1)
    try:
        first.client().post("/v1/admin/hold", json={"robot_id": "arm-1"})
        c = second.client()
        deadline = time.monotonic() + 5
        while not act(c, "arm-1")["hold"]:
            assert time.monotonic() < deadline, "the other service never held arm-1"
            time.sleep(0.05)
        assert act(c, "arm-2")["hold"] is False
        second.client().post("/v1/admin/release", json={"robot_id": "arm-1"})
        deadline = time.monotonic() + 5
        while act(first.client(), "arm-1")["hold"]:
            assert time.monotonic() < deadline, "the release never reached the first service"
            time.sleep(0.05)
    finally:
        second.stop()
        first.stop()


def test_a_robots_hold_takes_effect_at_once_while_the_store_is_busy(tmp_path: Path) -> None:
    svc = start_thread_service(tmp_path / "data", store_wait_s=0.3)
    c = svc.client()
    lock = StoreLock(svc.data_dir / "store.sqlite")
    try:
        answers: list[tuple[float, bool]] = []
        stop = threading.Event()

        def robot() -> None:
            with httpx.Client(base_url=svc.url, timeout=10) as own:
                while not stop.is_set():
                    answer = own.post("/v1/act", json={"obs": OBS, "robot_id": "arm-1"}).json()
                    answers.append((time.monotonic(), answer["hold"]))

        thread = threading.Thread(target=robot)
        thread.start()
        time.sleep(0.2)
        pressed = time.monotonic()
        r = c.post("/v1/admin/hold", json={"robot_id": "arm-1"})
        answered = time.monotonic() - pressed
        assert r.status_code == 200, r.text
        assert r.json()["held_robots"] == ["arm-1"] and r.json()["hold_persisted"] is False
        assert answered < 1.0, answered
        time.sleep(0.3)
        stop.set()
        thread.join(10)
        after = [held for t, held in answers if t > pressed + answered]
        assert after and all(after), f"{after.count(False)} acts answered unheld after the hold"
        # The release, the unsafe direction, waits for the store and says so when it cannot.
        assert_error(c.post("/v1/admin/release", json={"robot_id": "arm-1"}), 503, "store")
        assert act(c, "arm-1")["hold"] is True
    finally:
        lock.release()
    deadline = time.monotonic() + 5
    while not c.get("/v1/admin/status").json()["hold_persisted"]:
        assert time.monotonic() < deadline, "the robot's hold was never persisted"
        time.sleep(0.05)
    assert svc.state.store.control().held_robots == {"arm-1"}
    svc.stop()


def test_the_robots_view_lists_who_acted_ended_episodes_or_is_held(
    service: ThreadService,
) -> None:
    c = service.client()
    for _ in range(3):
        act(c, "arm-1")
    act(c, "arm-2")
    c.post("/v1/admin/hold", json={"robot_id": "arm-9"})  # held, never seen
    steps = [transition("arm-2", "e1", i, reward=float(i)) for i in range(3)]
    steps[-1]["terminated"] = True
    assert c.post("/v1/transitions", json={"transitions": steps}).status_code == 200
    time.sleep(0.01)  # e2 ends after e1
    last = [transition("arm-2", "e2", 0, reward=-1.0, truncated=True)]
    assert c.post("/v1/transitions", json={"transitions": last}).status_code == 200

    r = c.get("/v1/admin/robots")
    assert r.status_code == 200, r.text
    robots = {v["robot_id"]: v for v in r.json()["robots"]}
    assert set(robots) == {"arm-1", "arm-2", "arm-9"}
    one, two, nine = robots["arm-1"], robots["arm-2"], robots["arm-9"]
    assert (one["acts"], one["last_version"], one["episodes"], one["held"]) == (3, 0, 0, False)
    assert 0 <= one["last_act_age_s"] < 60
    assert (two["acts"], two["episodes"]) == (1, 2)
    # e1 returned 0 + 1 + 2 = 3, then e2 returned -1: the last first, the mean of both.
    assert (two["last_return"], two["mean_return"]) == (-1.0, 1.0)
    assert nine == {
        "robot_id": "arm-9",
        "held": True,
        "held_alone": True,
        "last_act_at": None,
        "last_act_age_s": None,
        "last_version": None,
        "acts": 0,
        "episodes": 0,
        "last_return": None,
        "mean_return": None,
    }
    c.post("/v1/admin/hold")
    assert all(v["held"] for v in c.get("/v1/admin/robots").json()["robots"])
    assert not any(
        v["held_alone"]
        for v in c.get("/v1/admin/robots").json()["robots"]
        if v["robot_id"] != "arm-9"
    )


def test_the_status_reports_this_replicas_traffic(service: ThreadService) -> None:
    c = service.client()
    assert c.get("/v1/admin/status").json()["traffic"]["acts_per_s"] == 0.0
    for _ in range(20):
        act(c, "arm-1")
    steps = [transition("arm-1", "e", i) for i in range(5)]
    c.post("/v1/transitions", json={"transitions": steps})
    traffic = c.get("/v1/admin/status").json()["traffic"]
    assert traffic["window_s"] > 0
    assert traffic["acts_per_s"] * traffic["window_s"] == pytest.approx(20, abs=0.5)
    assert traffic["transitions_per_s"] * traffic["window_s"] == pytest.approx(5, abs=0.5)
    assert 0 < traffic["act_latency_p50_ms"] <= traffic["act_latency_p99_ms"] < 1000
