"""``POST /v1/transitions`` with MessagePack bodies, over real HTTP on loopback.

The same object as the JSON body, vectors as float32 bytes or lists. It must store exactly what the
same transitions sent as JSON store, share their idempotency keys, and refuse every bad input with a
4xx whose ``detail`` is a sentence, through the fast path and through the FastAPI route alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from tests.servers import ROBOT_TOKEN, ThreadService, start_thread_service, transition
from tests.test_service_api import assert_error, metric

MSGPACK = {"content-type": "application/msgpack"}
OBS_DIM, ACTION_DIM = 17, 6


def f32(values: Any) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def packed(robot: str, episode: str, step: int, **kw: Any) -> dict[str, Any]:
    """``transition(...)`` with its vectors as float32 bytes; ``kw`` overrides fields."""
    t = transition(robot, episode, step)
    for name in ("obs", "action", "next_obs"):
        t[name] = f32(t[name])
    return {**t, **kw}


def post(c: httpx.Client, obj: Any, headers: dict[str, str] = MSGPACK) -> httpx.Response:
    return c.post("/v1/transitions", content=msgspec.msgpack.encode(obj), headers=headers)


def stored(data_dir: Path) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """The log's rows by key, read with plain sqlite3: vectors as the bytes on disk."""
    db = sqlite3.connect(data_dir / "store.sqlite")
    try:
        rows = db.execute(
            "SELECT robot_id, episode_id, step, obs, action, reward, next_obs, terminated, "
            "truncated, policy_version FROM transitions"
        ).fetchall()
    finally:
        db.close()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi-route"])
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    svc = start_thread_service(tmp_path_factory.mktemp("msgpack") / "data", fast_path=request.param)
    yield svc
    svc.stop()


def test_msgpack_stores_exactly_what_json_stores(service: ThreadService) -> None:
    c = service.client()
    rng = np.random.default_rng(0)
    values = [
        {
            "obs": rng.standard_normal(OBS_DIM).tolist(),
            "action": rng.uniform(-1, 1, ACTION_DIM).tolist(),
            "next_obs": rng.standard_normal(OBS_DIM).tolist(),
            "reward": float(rng.standard_normal()),
        }
        for _ in range(5)
    ]
    as_json = [{**transition("json", "e", s), **v} for s, v in enumerate(values)]
    as_bytes = [
        {
            **transition("bytes", "e", s),
            **v,
            **{k: f32(v[k]) for k in ("obs", "action", "next_obs")},
        }
        for s, v in enumerate(values)
    ]
    as_lists = [{**transition("lists", "e", s), **v} for s, v in enumerate(values)]
    for robot, ok in (
        ("json", c.post("/v1/transitions", json={"transitions": as_json})),
        ("bytes", post(c, {"transitions": as_bytes})),
        ("lists", post(c, {"transitions": as_lists})),
    ):
        assert ok.status_code == 200, (robot, ok.text)
        assert ok.json() == {"accepted": 5, "duplicates": 0}
        assert ok.headers["content-type"] == "application/json"  # answers stay JSON
    rows = stored(service.data_dir)
    assert len(rows) == 15
    for step in range(5):
        reference = rows[("json", "e", step)]
        assert rows[("bytes", "e", step)] == reference
        assert rows[("lists", "e", step)] == reference
        # and the bytes on disk are the float32 values that were sent
        assert reference[0] == f32(values[step]["obs"])


def test_the_key_is_the_key_whatever_the_body(service: ThreadService) -> None:
    c = service.client()
    batch = [transition("r1", "ep", s) for s in range(4)]
    assert c.post("/v1/transitions", json={"transitions": batch[:2]}).json()["accepted"] == 2
    retry = [packed("r1", "ep", s) for s in range(4)]
    assert post(c, {"transitions": retry}).json() == {"accepted": 2, "duplicates": 2}
    # a batch repeating a key inside itself counts it once
    again = [packed("r1", "ep", 4), packed("r1", "ep", 4)]
    assert post(c, {"transitions": again}).json() == {"accepted": 1, "duplicates": 1}
    # the same key with other content, in a JSON body or a packed one: 409, nothing stored
    other = [packed("r1", "ep", 5), packed("r1", "ep", 5, reward=5.0)]
    r = post(c, {"transitions": other})
    assert r.status_code == 409, r.text
    assert "r1/ep/5" in r.json()["detail"] and "reward" in r.json()["detail"]
    reused = transition("r1", "ep", 0, reward=2.0)
    r = c.post("/v1/transitions", json={"transitions": [reused]})
    assert r.status_code == 409 and "r1/ep/0" in r.json()["detail"], r.text
    assert service.state.store.transition_count() == 5
    assert stored(service.data_dir)[("r1", "ep", 0)][2] == 1.0  # the stored row stays
    text = c.get("/metrics").text
    assert metric(text, "robot_sac_transitions_accepted_total") == 5.0
    assert metric(text, "robot_sac_transitions_duplicates_total") == 3.0


@pytest.mark.parametrize(
    "content_type",
    ["application/x-msgpack", "application/vnd.msgpack", "Application/MsgPack; charset=binary"],
)
def test_every_msgpack_content_type_is_read_as_msgpack(
    shared: ThreadService, content_type: str
) -> None:
    c = shared.client()
    key = content_type.split(";")[0].lower()
    r = post(c, {"transitions": [packed(key, "e", 0)]}, {"content-type": content_type})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}


def _with(**kw: Any) -> dict[str, Any]:
    return {"transitions": [{**packed("bad", "e", 0), **kw}]}


def _without(field: str) -> dict[str, Any]:
    t = packed("bad", "e", 0)
    del t[field]
    return {"transitions": [t]}


NAN_OBS = f32([0.0] * (OBS_DIM - 1) + [float("nan")])
INF_ACTION = f32([float("inf")] + [0.0] * (ACTION_DIM - 1))

# (id, body: an object to encode or raw bytes, status, words the detail must contain)
BAD: list[tuple[str, Any, int, tuple[str, ...]]] = [
    ("not-msgpack", b"\xc1\xc1", 400, ("MessagePack",)),
    ("truncated", msgspec.msgpack.encode(_with())[:-3], 400, ("MessagePack",)),
    (
        "json-sent-as-msgpack",
        json.dumps({"transitions": [transition("bad", "e", 0)]}).encode(),
        400,
        ("MessagePack",),
    ),
    ("empty-body", b"", 422, ("MessagePack", "body")),
    ("obs-16-values", _with(obs=f32([0.0] * 16)), 422, ("obs", "64 bytes", "17")),
    ("obs-odd-bytes", _with(obs=b"\x00" * 67), 422, ("obs", "67 bytes")),
    ("obs-empty-bytes", _with(obs=b""), 422, ("obs", "0 bytes")),
    ("action-7-values", _with(action=f32([0.0] * 7)), 422, ("action", "28 bytes", "6")),
    ("next-obs-list-short", _with(next_obs=[0.0] * 3), 422, ("next_obs", "3 values")),
    ("obs-nan", _with(obs=NAN_OBS), 422, ("obs", "finite")),
    ("action-inf", _with(action=INF_ACTION), 422, ("action", "finite")),
    ("obs-list-nan", _with(obs=[float("nan")] * OBS_DIM), 422, ("obs",)),
    ("reward-nan", _with(reward=float("nan")), 422, ("reward",)),
    ("reward-beyond-float32", _with(reward=1e39), 422, ("reward",)),
    ("reward-string", _with(reward="1.0"), 422, ("reward",)),
    ("obs-string", _with(obs="0.0"), 422, ("obs",)),
    ("step-negative", _with(step=-1), 422, ("step",)),
    ("step-float", _with(step=1.5), 422, ("step",)),
    ("terminated-int", _with(terminated=0), 422, ("terminated",)),
    ("robot-id-bytes-empty", _with(robot_id=""), 422, ("robot_id",)),
    ("missing-reward", _without("reward"), 422, ("reward",)),
    ("unknown-field", _with(rewrad=1.0), 422, ("rewrad",)),
    ("empty-list", {"transitions": []}, 422, ("transitions",)),
    ("body-array", [packed("bad", "e", 0)], 422, ("map", "transitions")),
    ("body-int", 7, 422, ("map", "transitions")),
]


@pytest.mark.parametrize(
    ("body", "status", "mentions"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_msgpack_is_a_clear_4xx_and_stores_nothing(
    shared: ThreadService, body: Any, status: int, mentions: tuple[str, ...]
) -> None:
    c = shared.client()
    before = shared.state.store.transition_count()
    data = body if isinstance(body, bytes) else msgspec.msgpack.encode(body)
    r = c.post("/v1/transitions", content=data, headers=MSGPACK)
    detail = assert_error(r, status, *mentions)
    assert "internal" not in detail
    assert shared.state.store.transition_count() == before


@pytest.fixture
def small(tmp_path: Path) -> Iterator[ThreadService]:
    svc = start_thread_service(tmp_path / "small", max_body_bytes=4096, robot_token=ROBOT_TOKEN)
    yield svc
    svc.stop()


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_limits_and_tokens_hold_for_msgpack(small: ThreadService) -> None:
    c = small.client(ROBOT_TOKEN)
    big = msgspec.msgpack.encode({"transitions": [packed("r", "e", s) for s in range(40)]})
    assert len(big) > 4096
    assert_error(c.post("/v1/transitions", content=big, headers=MSGPACK), 413, "4096")
    r = c.post("/v1/transitions", content=_chunks(big), headers=MSGPACK)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "4096")
    one = msgspec.msgpack.encode({"transitions": [packed("r", "e", 0)]})
    anonymous = httpx.post(f"{small.url}/v1/transitions", content=one, headers=MSGPACK)
    assert_error(anonymous, 401, "token")
    assert small.state.store.transition_count() == 0
    assert c.post("/v1/transitions", content=one, headers=MSGPACK).json()["accepted"] == 1


def test_openapi_documents_the_msgpack_body(service: ThreadService) -> None:
    schema = service.client().get("/openapi.json").json()
    content = schema["paths"]["/v1/transitions"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/msgpack"}
    assert "float32" in content["application/msgpack"]["schema"]["description"]
