"""Durability: kill -9 the service while robots log; every acknowledged transition survives."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import CHEETAH, ProcessService, transition, write_task


def sender(
    url: str, robot: str, acked: set[tuple[str, str, int]], in_flight: list[list[dict]]
) -> None:
    """Log batches of 20 until the service dies; remember what got a 200 and what was in flight."""
    step = 0
    with httpx.Client(base_url=url, timeout=5.0) as c:
        while True:
            batch = [transition(robot, "e0", step + k) for k in range(20)]
            try:
                r = c.post("/v1/transitions", json={"transitions": batch})
            except httpx.HTTPError:
                in_flight.append(batch)  # outcome unknown: the robot will retry it
                return
            if r.status_code != 200:
                in_flight.append(batch)
                return
            assert r.json() == {"accepted": 20, "duplicates": 0}
            acked.update((t["robot_id"], t["episode_id"], t["step"]) for t in batch)
            step += 20


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_transition(tmp_path: Path):
    rng = random.Random(0)
    data = tmp_path / "data"
    task = write_task(tmp_path / "task.json", CHEETAH)
    acked: set[tuple[str, str, int]] = set()
    for round_ in range(10):
        svc = ProcessService(data, task).start()
        in_flight: list[list[dict]] = []
        robots = [
            threading.Thread(target=sender, args=(svc.url, f"r{round_}-{i}", acked, in_flight))
            for i in range(2)
        ]
        for t in robots:
            t.start()
        time.sleep(rng.uniform(0.2, 1.0))
        svc.kill()  # SIGKILL: no shutdown handler runs
        for t in robots:
            t.join()
        assert in_flight, "the senders must have been cut off mid-flight"

        # Restart on the same data; the robots retry what was in flight.
        svc = ProcessService(data, task).start()
        with httpx.Client(base_url=svc.url, timeout=10.0) as c:
            for batch in in_flight:
                r = c.post("/v1/transitions", json={"transitions": batch})
                assert r.status_code == 200
                body = r.json()
                assert body["accepted"] + body["duplicates"] == len(batch)
                acked.update((t["robot_id"], t["episode_id"], t["step"]) for t in batch)
            count = c.get("/v1/admin/status").json()["transitions"]
        svc.terminate()

        db = sqlite3.connect(data / "store.sqlite")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = db.execute("SELECT robot_id, episode_id, step FROM transitions").fetchall()
        finally:
            db.close()
        assert len(stored) == len(set(stored)), "a transition is stored twice"
        assert acked <= set(stored), f"lost {len(acked - set(stored))} acknowledged transitions"
        assert count == len(stored)
