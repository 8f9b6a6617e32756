"""The service rides out a PostgreSQL that goes away for a few seconds.

The database is cut off through a TCP proxy (tests/tcp_proxy.py: every connection reset, new ones
refused) rather than by restarting the machine's server. Meanwhile acts are answered from the
loaded policy, transitions and operator writes get 503 with ``Retry-After``, the hold holds from
its arrival, and ``/readyz`` says the store is unavailable; once the proxy forwards again, the pool
reconnects by itself and everything acknowledged before, during and after is in the log once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from robot_sac.store import open_store
from tests.pg import database_of
from tests.servers import CHEETAH, ThreadService, start_thread_service, transition
from tests.tcp_proxy import TcpProxy

OBS = [0.1] * CHEETAH.obs_dim


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


@pytest.fixture
def fleet_service(tmp_path: Path, pg_url: str, proxy: TcpProxy) -> Iterator[ThreadService]:
    svc = start_thread_service(
        tmp_path / "data", store_url=proxy.url_for(database_of(pg_url)), store_wait_s=1.0
    )
    yield svc
    svc.stop()


def _wait_for(condition: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def test_acts_go_on_writes_get_503_and_nothing_acknowledged_is_lost_while_the_database_is_away(
    fleet_service: ThreadService, proxy: TcpProxy, pg_url: str
) -> None:
    c = fleet_service.client()
    acknowledged: list[tuple[str, str, int]] = []
    refused = 0

    def post(step: int) -> httpx.Response:
        t = transition("r1", "e1", step)
        r = c.post("/v1/transitions", json={"transitions": [t]})
        if r.status_code == 200:
            acknowledged.append(("r1", "e1", step))
        return r

    for step in range(5):
        assert post(step).status_code == 200
    assert c.get("/readyz").json()["store"]["state"] == "ok"

    # Robots keep acting through the outage; every answer must be a 200 with a bounded action.
    acts: list[int] = []
    stop = threading.Event()

    def robot() -> None:
        with httpx.Client(base_url=fleet_service.url, timeout=10) as own:
            while not stop.is_set():
                acts.append(own.post("/v1/act", json={"obs": OBS}).status_code)
                time.sleep(0.01)

    actor = threading.Thread(target=robot)
    actor.start()
    try:
        proxy.cut()
        cut_at = time.monotonic()
        # Transitions: 503 with Retry-After, within the store wait, never a 500.
        for step in range(5, 8):
            started = time.monotonic()
            r = post(step)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] in ("1", "5")
            assert "store" in r.json()["detail"]
            assert time.monotonic() - started < 5.0
            refused += 1
        # Operator writes that need the store: 503 with Retry-After.
        r = c.post("/v1/admin/learner/pause")
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        # The hold does not wait for the store: it holds from its arrival.
        r = c.post("/v1/admin/hold")
        assert r.status_code == 200 and r.json()["hold"] is True
        assert r.json()["hold_persisted"] is False
        act = c.post("/v1/act", json={"obs": OBS}).json()
        assert act["hold"] is True
        # The robots view: who acted here and who is held, without the episodes, and why.
        assert c.post("/v1/act", json={"obs": OBS, "robot_id": "arm-1"}).json()["hold"] is True
        robots = c.get("/v1/admin/robots")
        assert robots.status_code == 200, robots.text
        assert "store" in robots.json()["store_error"]
        (arm,) = [r for r in robots.json()["robots"] if r["robot_id"] == "arm-1"]
        assert arm["held"] is True and arm["acts"] >= 1 and arm["episodes"] is None
        # /readyz: still ready (acts are answered) and says the store is away.
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["store"]["state"] == "unavailable", ready.json()
        assert time.monotonic() - cut_at < 20
        time.sleep(max(0.0, 3.0 - (time.monotonic() - cut_at)))  # a few seconds away in all
    finally:
        proxy.restore()
    try:
        # The pool reconnects by itself: the next writes succeed, the hold reaches the store.
        _wait_for(lambda: post(100).status_code == 200, "transitions accepted again")
        _wait_for(lambda: c.get("/v1/admin/status").json()["hold_persisted"], "the hold persisted")
        _wait_for(lambda: c.get("/readyz").json()["store"]["state"] == "ok", "/readyz reporting ok")
        for step in range(5, 8):  # the robot re-sends what was refused
            assert post(step).status_code == 200
        assert c.post("/v1/admin/release").json()["hold"] is False
    finally:
        stop.set()
        actor.join(10)
    assert acts and set(acts) == {200}, f"acts answered {sorted(set(acts))} during the outage"
    assert refused == 3
    # Every acknowledged transition is in the log exactly once (read past the proxy).
    with open_store(CHEETAH, url=pg_url) as store:
        assert store.transition_count() == len(set(acknowledged)) == 9
        rows = store.read_after(0, 100)
        assert len(rows) == 9
        assert store.control().hold is False
