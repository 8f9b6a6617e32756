"""RobotClient against a real service: act, log, retries across a restart, timeouts, hold."""

from __future__ import annotations

import socket
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from robot_sac.client import RobotClient, ServiceError
from tests.servers import (
    CHEETAH,
    OPERATOR_TOKEN,
    ROBOT_TOKEN,
    ProcessService,
    ThreadService,
    free_port,
    write_task,
)

OBS = [0.1] * 17
ACTION = [0.0] * 6


def test_act_and_log_round_trip(service: ThreadService):
    with RobotClient(service.url, "arm-1", batch_size=16, flush_interval_s=0.05) as robot:
        action, version, hold = robot.act(OBS)
        assert len(action) == 6 and version == 0 and hold is False
        for step in range(40):
            robot.log("ep-1", step, OBS, action, 1.0, OBS, False, step == 39, version)
        robot.flush()
        assert robot.pending == 0 and robot.sent == 40
    assert service.state.store.transition_count() == 40
    rows = service.state.store.read_after(0, 100)
    assert len(rows) == 40 and rows.truncated[-1] and not rows.truncated[:-1].any()


def test_tokens_and_refusals_raise_service_errors(secured_service: ThreadService):
    with RobotClient(secured_service.url, "arm-1", token="wrong") as robot:
        with pytest.raises(ServiceError) as info:
            robot.act(OBS)
        assert info.value.status == 401
    with RobotClient(secured_service.url, "arm-1", token=ROBOT_TOKEN) as robot:
        assert robot.act(OBS)[1] == 0
        with pytest.raises(ServiceError) as info:
            robot.act([0.0] * 3)  # wrong length: a 422 with a sentence
        assert info.value.status == 422 and "obs" in info.value.detail
        with pytest.raises(ServiceError) as info:
            robot.status()  # an operator route
        assert info.value.status == 403


def test_hold_is_reported_to_the_robot(service: ThreadService):
    service.client().post("/v1/admin/hold")
    with RobotClient(service.url, "arm-1") as robot:
        action, _, hold = robot.act(OBS)
        assert hold is True and action == [0.0] * 6
    service.client().post("/v1/admin/release")


def test_act_times_out_instead_of_waiting_forever():
    # a server that accepts the connection and never answers
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    robot = RobotClient(f"http://127.0.0.1:{port}", "arm-1", timeout_s=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            robot.act(OBS)
        assert time.monotonic() - start < 2.0
    finally:
        robot.close(timeout_s=0.1)
        listener.close()


def test_every_logged_transition_arrives_exactly_once_across_a_restart(tmp_path: Path):
    data = tmp_path / "data"
    task = write_task(tmp_path / "task.json", CHEETAH)
    port = free_port()
    svc = ProcessService(data, task, port=port).start()
    robot = RobotClient(svc.url, "arm-1", batch_size=25, flush_interval_s=0.02, retry_max_s=0.2)
    try:
        for step in range(300):
            robot.log("ep-1", step, OBS, ACTION, float(step), OBS, False, False, 0)
            if step == 100:
                svc.kill()  # mid-stream: batches in flight and queued
            if step == 200:
                svc = ProcessService(data, task, port=port).start()
            time.sleep(0.002)
        robot.flush(timeout_s=60)
        assert robot.retries > 0  # it did have to retry
    finally:
        robot.close(timeout_s=60)
        svc.terminate()
    db = sqlite3.connect(data / "store.sqlite")
    steps = [s for (s,) in db.execute("SELECT step FROM transitions ORDER BY step")]
    db.close()
    assert steps == list(range(300))


def test_a_full_queue_blocks_the_robot_instead_of_dropping(tmp_path: Path):
    port = free_port()  # nothing listens here
    robot = RobotClient(f"http://127.0.0.1:{port}", "arm-1", max_queue=10, retry_max_s=0.05)
    done = threading.Event()

    def produce() -> None:
        for step in range(15):
            robot.log("ep", step, OBS, ACTION, 0.0, OBS, False, False)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.0)
    assert not done.is_set() and robot.pending == 10  # blocked, nothing lost
    # the service comes up on that port: the queue drains and the producer goes on
    svc = ProcessService(tmp_path / "data", write_task(tmp_path / "task.json", CHEETAH), port=port)
    svc.start()
    try:
        producer.join(timeout=60)
        assert done.is_set()
        robot.close(timeout_s=60)
        with httpx.Client(base_url=svc.url) as c:
            assert c.get("/v1/admin/status").json()["transitions"] == 15
    finally:
        svc.terminate()


def test_operator_token_reads_status(secured_service: ThreadService):
    with RobotClient(secured_service.url, "ops", token=OPERATOR_TOKEN) as client:
        status = client.status()
        assert status.served_version == 0 and status.task is not None
        assert status.task.obs_dim == 17


def test_both_body_formats_store_the_same_float32_values(service: ThreadService):
    obs = [0.1 * i - 0.7 for i in range(17)]
    action = [1 / 3, -0.2, 0.0, 0.5, -1.0, 1.0]
    for robot_id, body_format in (("packed", "msgpack"), ("plain", "json")):
        sent_as: list[str] = []
        with RobotClient(service.url, robot_id, body_format=body_format) as robot:
            robot._sender_http.event_hooks["request"].append(
                lambda request, seen=sent_as: seen.append(request.headers["content-type"])
            )
            for step in range(3):
                robot.log("ep", step, obs, action, 0.5, obs[::-1], False, step == 2, 0)
        assert robot.sent == 3
        assert sent_as and set(sent_as) == {f"application/{body_format}"}
    db = sqlite3.connect(service.data_dir / "store.sqlite")
    rows = {
        (r, s): (o, a, n)
        for r, s, o, a, n in db.execute(
            "SELECT robot_id, step, obs, action, next_obs FROM transitions"
        )
    }
    db.close()
    assert len(rows) == 6
    expected = (
        struct.pack("<17f", *obs),
        struct.pack("<6f", *action),
        struct.pack("<17f", *obs[::-1]),
    )
    for step in range(3):
        assert rows[("packed", step)] == rows[("plain", step)] == expected
    text = httpx.get(f"{service.url}/metrics").text
    assert 'route="/v1/transitions",status="200"' in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("obs", float("nan")), ("action", float("inf")), ("next_obs", 1e39), ("reward", 1e39)],
)
def test_log_refuses_what_the_service_would_refuse_at_once(field: str, value: float):
    port = free_port()  # nothing listens: the refusal must come before any sending
    robot = RobotClient(f"http://127.0.0.1:{port}", "arm-1")
    try:
        fields: dict[str, Any] = {"obs": OBS, "action": ACTION, "next_obs": OBS, "reward": 0.0}
        fields[field] = value if field == "reward" else [value, *fields[field][1:]]
        with pytest.raises(ValueError, match=field):
            robot.log(
                "ep",
                0,
                fields["obs"],
                fields["action"],
                fields["reward"],
                fields["next_obs"],
                False,
                False,
            )
        assert robot.pending == 0
    finally:
        robot.close(timeout_s=0.1)


def test_an_unknown_body_format_is_refused():
    with pytest.raises(ValueError, match="body_format"):
        RobotClient("http://127.0.0.1:1", "arm-1", body_format="xml")  # type: ignore[arg-type]
