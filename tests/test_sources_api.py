"""A transition's ``source`` (policy, human, demo) through the HTTP API, over real HTTP on loopback.

Sent in JSON and MessagePack bodies (and by ``RobotClient`` in either format), it must reach the
store, SQLite or PostgreSQL, and come back out of ``read_after``; a retry with another source is a
409 and the stored key keeps its source; a source the API does not know is a 422 that names the
field and the choices, through the fast path and the FastAPI route, for small bodies (pydantic's
answer) and large ones (msgspec's); and the operator's status counts the log by source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from robot_sac.client import RobotClient
from robot_sac.services.inference.wire import EXACT_ERRORS_MAX_BYTES
from robot_sac.store import Store, open_store
from robot_sac.store.records import SOURCE_CODES
from tests.servers import CHEETAH, ThreadService, start_thread_service, transition
from tests.store_backends import BACKENDS, pg_database_for
from tests.test_service_api import assert_error

MSGPACK = {"content-type": "application/msgpack"}


def packed(robot: str, episode: str, step: int, **kw: Any) -> dict[str, Any]:
    """``transition(...)`` with its vectors as float32 bytes, as ``RobotClient`` sends them."""
    t = transition(robot, episode, step, **kw)
    for name in ("obs", "action", "next_obs"):
        t[name] = np.asarray(t[name], "<f4").tobytes()
    return t


def post_json(c: httpx.Client, batch: list[dict[str, Any]]) -> httpx.Response:
    return c.post("/v1/transitions", json={"transitions": batch})


def post_msgpack(c: httpx.Client, batch: list[dict[str, Any]]) -> httpx.Response:
    body = msgspec.msgpack.encode({"transitions": batch})
    return c.post("/v1/transitions", content=body, headers=MSGPACK)


class Served:
    """A service on one backend, and a store of its own on the same data (another reader)."""

    def __init__(self, backend: str, where: Path) -> None:
        self.url = pg_database_for(where / "pg") if backend == "postgres" else None
        self.service = start_thread_service(where / "data", store_url=self.url)
        self.reader: Store = open_store(CHEETAH, where / "data", url=self.url)

    def close(self) -> None:
        self.reader.close()
        self.service.stop()


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    s = Served(request.param, tmp_path)
    yield s
    s.close()


def read_back(store: Store) -> list[tuple[int, int]]:
    """``(step, source code)`` of every stored row, in log order."""
    rows = store.read_after(0, 10_000)
    assert rows.source.dtype == np.uint8
    steps = [round(float(x) * 100) for x in rows.obs[:, 0]]
    return list(zip(steps, rows.source.tolist(), strict=True))


def test_sources_round_trip_through_both_body_formats_into_the_store(served: Served) -> None:
    c = served.service.client()
    # JSON: the source left out (the policy's), and each source said
    as_json = [
        transition("arm-1", "json", 0),
        transition("arm-1", "json", 1, source="policy"),
        transition("arm-1", "json", 2, source="human"),
        transition("arm-1", "json", 3, source="demo"),
    ]
    r = post_json(c, as_json)
    assert r.status_code == 200 and r.json() == {"accepted": 4, "duplicates": 0}, r.text
    # MessagePack with float32 vectors, and with lists
    as_bytes = [packed("arm-1", "packed", s, source=n) for s, n in ((4, "demo"), (5, "human"))]
    as_lists = [transition("arm-1", "lists", 6, source="human"), transition("arm-1", "lists", 7)]
    for batch in (as_bytes, as_lists):
        r = post_msgpack(c, batch)
        assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 0}, r.text
    p, h, d = (SOURCE_CODES[n] for n in ("policy", "human", "demo"))
    want = [(0, p), (1, p), (2, h), (3, d), (4, d), (5, h), (6, h), (7, p)]
    assert read_back(served.reader) == want

    # an identical retry is a duplicate, whatever the format it comes in
    assert post_msgpack(c, [packed("arm-1", "json", 2, source="human")]).json()["duplicates"] == 1
    again = post_json(c, [transition("arm-1", "packed", 4, source="demo")])
    assert again.json() == {"accepted": 0, "duplicates": 1}
    # the same key with another source is a 409 naming the key and the field; nothing of the
    # batch is stored, and the stored key keeps its source
    for post, sent in (
        (post_json, [transition("arm-1", "z", 9), transition("arm-1", "json", 3)]),
        (post_msgpack, [packed("arm-1", "z", 9), packed("arm-1", "packed", 5, source="demo")]),
    ):
        detail = assert_error(post(c, sent), 409, "source", "stored")
        assert "arm-1/json/3" in detail or "arm-1/packed/5" in detail, detail
    assert read_back(served.reader) == want

    status = c.get("/v1/admin/status").json()
    assert status["transitions_by_source"] == {"policy": 3, "human": 3, "demo": 2}
    assert status["transitions"] == 8


BAD_SOURCES = [("teleop", "'teleop'"), ("Human", "'Human'"), (1, None), (None, None)]


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi-route"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadService]:
    svc = start_thread_service(tmp_path_factory.mktemp("sources") / "data", fast_path=request.param)
    yield svc
    svc.stop()


@pytest.mark.parametrize("body", ["json", "msgpack"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("bad", BAD_SOURCES, ids=[repr(b[0]) for b in BAD_SOURCES])
def test_a_source_the_api_does_not_know_is_a_422_naming_the_field_and_the_choices(
    shared: ThreadService, body: str, size: str, bad: tuple[Any, str | None]
) -> None:
    c = shared.client()
    value, shown = bad
    count = 2 if size == "small" else 80  # 80 transitions: beyond pydantic's exact answers
    batch = [transition("bad", f"{body}-{size}-{value}", s) for s in range(count)]
    batch[-1]["source"] = value
    post = post_json if body == "json" else post_msgpack
    if size == "large":
        assert len(msgspec.json.encode({"transitions": batch})) > EXACT_ERRORS_MAX_BYTES
    before = c.get("/v1/admin/status").json()["transitions_by_source"]
    detail = assert_error(
        post(c, batch), 422, f"transitions[{count - 1}].source", "'policy', 'human' or 'demo'"
    )
    if shown is not None and size == "large":
        assert shown in detail, detail  # msgspec's answer names the value too
    assert c.get("/v1/admin/status").json()["transitions_by_source"] == before  # none stored
    assert post(c, batch[:-1]).status_code == 200  # the batch's good part goes in alone
    after = c.get("/v1/admin/status").json()["transitions_by_source"]
    assert after == {**before, "policy": before["policy"] + count - 1}


@pytest.mark.parametrize("body_format", ["msgpack", "json"])
def test_robot_client_logs_each_source(
    service: ThreadService, body_format: Any, tmp_path: Path
) -> None:
    sources = ["policy", "human", "human", "demo", "policy"]
    with RobotClient(service.url, "arm-1", body_format=body_format, flush_interval_s=0.05) as robot:
        for step, source in enumerate(sources):
            obs = [0.01 * step] * CHEETAH.obs_dim
            robot.log("ep", step, obs, [0.0] * 6, 1.0, obs, False, False, source=source)  # type: ignore[arg-type]
        robot.log("ep", 5, [0.05] * 17, [0.0] * 6, 1.0, [0.06] * 17, False, False)  # default
        # a source the service would refuse is refused at once, where the robot's bug is
        with pytest.raises(ValueError, match="source must be one of policy, human, demo"):
            robot.log("ep", 6, [0.0] * 17, [0.0] * 6, 1.0, [0.0] * 17, False, False, source="x")  # type: ignore[arg-type]
        robot.flush(timeout_s=30)
        assert robot.pending == 0 and robot.sent == 6
    with open_store(CHEETAH, service.data_dir) as store:
        codes = [SOURCE_CODES[s] for s in [*sources, "policy"]]
        assert read_back(store) == list(enumerate(codes))
    status = service.client().get("/v1/admin/status").json()
    assert status["transitions_by_source"] == {"policy": 3, "human": 2, "demo": 1}
