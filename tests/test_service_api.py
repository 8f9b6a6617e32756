"""The inference service's HTTP API v1, over real HTTP on loopback.

1. every route of the v1 table: status and answer shape on a service without tokens;
2. the auth matrix: every route against no token, a wrong token, the robot and operator tokens;
3. bad input: a 4xx with a ``detail`` sentence naming the field, never a 500, never a crash;
4. policy uploads that fail a check are refused (422) and leave the registry and serving alone;
5. malformed transitions never reach the store;
6. version retention: the service reports what it serves, and a pruned version is 404.

Some tests here first exposed bugs (a chunked body over the limit, numbers beyond 64 bits or
float32 reaching the database, a stale control read undoing a hold); they now guard the fixes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import safetensors.torch
import torch

import robot_sac.services.inference.serving as serving_module
from robot_sac.networks import Actor
from robot_sac.policy import load_policy, policy_bytes
from robot_sac.store import Store, StoreUnavailable, open_store
from robot_sac.store.base import SERVED_WITHIN_S
from tests.servers import (
    CHEETAH,
    OPERATOR_TOKEN,
    ROBOT_TOKEN,
    ThreadService,
    start_thread_service,
    transition,
)

OBS_DIM, ACTION_DIM = CHEETAH.obs_dim, CHEETAH.action_dim
LOW, HIGH = [-1.0] * ACTION_DIM, [1.0] * ACTION_DIM
OBS = [0.1] * OBS_DIM
JSON = {"content-type": "application/json"}
OCTET = {"content-type": "application/octet-stream"}
# Observations beyond float32 (tested on purpose) make numpy warn in the service's threads.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


# --- helpers ------------------------------------------------------------------------------------


def actor_bytes(
    obs_dim: int = OBS_DIM,
    action_dim: int = ACTION_DIM,
    low: list[float] | None = None,
    high: list[float] | None = None,
    version: int = 123,
    seed: int = 1,
    hidden: tuple[int, ...] = (32, 32),
) -> bytes:
    """A valid version file (for the cheetah task unless told otherwise)."""
    torch.manual_seed(seed)
    actor = Actor(obs_dim, action_dim, hidden)
    low = LOW[:action_dim] if low is None else low
    high = HIGH[:action_dim] if high is None else high
    return policy_bytes(actor, low, high, version=version)


def raw_json(text: str) -> bytes:
    """JSON text sent byte for byte: NaN, Infinity, broken or non-UTF-8 bodies."""
    return text.encode()


def assert_error(r: httpx.Response, status: int | tuple[int, ...], *mentions: str) -> str:
    """The status is ``status`` (or one of them) and the body is ``{"detail": "<sentence>"}``."""
    assert r.status_code in ((status,) if isinstance(status, int) else status), (
        r.status_code,
        r.text,
    )
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str) and detail.strip(), body
    for word in mentions:
        assert word in detail, (word, detail)
    return detail


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one Prometheus sample (``labels`` as written, e.g. ``route="/v1/act"``)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


def assert_actions(rows: list[list[float]]) -> None:
    for row in rows:
        assert len(row) == ACTION_DIM
        for a, lo, hi in zip(row, LOW, HIGH, strict=True):
            assert isinstance(a, float) and math.isfinite(a) and lo <= a <= hi, row


def wait_for_version(c: httpx.Client, version: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = c.get("/v1/policy").json()["version"]
        if got == version:
            return
        assert time.monotonic() < deadline, f"still serving {got}, expected {version}"
        time.sleep(0.02)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    """One service without tokens for the table of bad inputs (they change nothing)."""
    svc = start_thread_service(tmp_path_factory.mktemp("shared") / "data")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def shared_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    """One secured service for the auth matrix (each admin POST is undone after its test)."""
    svc = start_thread_service(
        tmp_path_factory.mktemp("secured") / "data",
        robot_token=ROBOT_TOKEN,
        operator_token=OPERATOR_TOKEN,
    )
    yield svc
    svc.stop()


@pytest.fixture
def small_service(tmp_path: Path) -> Iterator[ThreadService]:
    """A service whose body limits are 4 KiB, to test 413 cheaply."""
    svc = start_thread_service(
        tmp_path / "small",
        max_body_bytes=4096,
        max_upload_bytes=4096,
        max_act_body_bytes=4096,
        max_act_batch_body_bytes=4096,
    )
    yield svc
    svc.stop()


# === 1. the v1 table on a service without tokens ================================================


def test_act_answers_a_bounded_finite_action_of_version_0(service: ThreadService) -> None:
    c = service.client()
    for body in ({"obs": OBS}, {"obs": OBS, "deterministic": False, "robot_id": "r1"}):
        r = c.post("/v1/act", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"action", "policy_version", "hold"}
        assert_actions([out["action"]])
        assert out["policy_version"] == 0 and out["hold"] is False
    # Integers are numbers too.
    assert c.post("/v1/act", json={"obs": [1] * OBS_DIM}).status_code == 200


def test_act_deterministic_is_repeatable_and_stochastic_is_not(service: ThreadService) -> None:
    c = service.client()
    first = c.post("/v1/act", json={"obs": OBS, "deterministic": True}).json()["action"]
    second = c.post("/v1/act", json={"obs": OBS, "deterministic": True}).json()["action"]
    assert first == second
    samples = [c.post("/v1/act", json={"obs": OBS}).json()["action"] for _ in range(3)]
    assert samples[0] != samples[1] or samples[1] != samples[2]
    # The deterministic action is the served version's mode, computed here from its file.
    policy = load_policy(c.get("/v1/policy/weights").content)
    expected = policy.act(OBS, deterministic=True).tolist()
    assert first == pytest.approx(expected, abs=1e-5)


def test_act_batch_answers_one_row_per_observation(service: ThreadService) -> None:
    c = service.client()
    obs = [[0.05 * i] * OBS_DIM for i in range(5)]
    r = c.post("/v1/act/batch", json={"obs": obs, "deterministic": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"actions", "policy_version", "hold"}
    assert len(out["actions"]) == 5
    assert_actions(out["actions"])
    assert out["policy_version"] == 0 and out["hold"] is False
    # Row i is what /v1/act answers for obs[i].
    single = c.post("/v1/act", json={"obs": obs[3], "deterministic": True}).json()["action"]
    assert out["actions"][3] == pytest.approx(single, abs=1e-5)
    stochastic = c.post("/v1/act/batch", json={"obs": obs}).json()
    assert len(stochastic["actions"]) == 5
    assert_actions(stochastic["actions"])


def test_concurrent_acts_are_batched_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    """Robots asking at once share forward passes; deterministic rows still get the mode."""
    svc = start_thread_service(tmp_path / "d", max_wait_ms=20.0)
    try:
        c = svc.client()
        policy = load_policy(c.get("/v1/policy/weights").content)
        obs = [[0.03 * i - 0.3] * OBS_DIM for i in range(16)]
        results: list[Any] = [None] * len(obs)

        def ask(i: int) -> None:
            with httpx.Client(base_url=svc.url, timeout=30) as own:
                body = {"obs": obs[i], "deterministic": i % 2 == 0}
                results[i] = own.post("/v1/act", json=body)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(obs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, r in enumerate(results):
            assert r is not None and r.status_code == 200, r
            out = r.json()
            assert out["policy_version"] == 0 and out["hold"] is False
            assert_actions([out["action"]])
            if i % 2 == 0:
                expected = policy.act(obs[i], deterministic=True).tolist()
                assert out["action"] == pytest.approx(expected, abs=1e-5), i
        text = c.get("/metrics").text
        passes = metric(text, "robot_sac_forward_passes_total")
        assert passes is not None and 1 <= passes < len(obs)
    finally:
        svc.stop()


def test_act_refuses_observations_beyond_float32_and_answers_the_largest_finite_ones(
    service: ThreadService,
) -> None:
    # 1e300 is finite JSON but overflows float32 (the policy's arithmetic): refused, not guessed.
    c = service.client()
    assert_error(c.post("/v1/act", json={"obs": [1e300] * OBS_DIM}), 422, "obs")
    assert_error(c.post("/v1/act/batch", json={"obs": [[-1e300] * OBS_DIM, OBS]}), 422, "obs")
    # The largest float32 values are accepted, and still give finite, bounded actions.
    r = c.post("/v1/act", json={"obs": [3.4e38] * OBS_DIM, "deterministic": True})
    assert r.status_code == 200, r.text
    assert_actions([r.json()["action"]])
    r = c.post("/v1/act/batch", json={"obs": [[-3.4e38] * OBS_DIM, OBS]})
    assert r.status_code == 200, r.text
    assert_actions(r.json()["actions"])


def test_transitions_round_trip_with_idempotent_retries(service: ThreadService) -> None:
    c = service.client()
    batch = [transition("r1", "ep1", s) for s in range(3)]
    r = c.post("/v1/transitions", json={"transitions": batch})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 3, "duplicates": 0}
    # The same batch again (a retry): a success, nothing stored twice.
    assert c.post("/v1/transitions", json={"transitions": batch}).json() == {
        "accepted": 0,
        "duplicates": 3,
    }
    # A batch half old, half new; another robot's same (episode, step) is another key.
    mixed = [*batch[1:], transition("r1", "ep1", 3), transition("r2", "ep1", 0)]
    assert c.post("/v1/transitions", json={"transitions": mixed}).json() == {
        "accepted": 2,
        "duplicates": 2,
    }
    # policy_version is optional.
    t = transition("r3", "ep1", 0)
    del t["policy_version"]
    assert c.post("/v1/transitions", json={"transitions": [t]}).json()["accepted"] == 1
    assert service.state.store.transition_count() == 6
    assert c.get("/v1/admin/status").json()["transitions"] == 6
    text = c.get("/metrics").text
    assert metric(text, "robot_sac_transitions_accepted_total") == 6.0
    assert metric(text, "robot_sac_transitions_duplicates_total") == 5.0


def test_policy_description_matches_the_weights(service: ThreadService) -> None:
    c = service.client()
    r = c.get("/v1/policy")
    assert r.status_code == 200, r.text
    desc = r.json()
    for key, kind in (
        ("version", int),
        ("created_at", str),
        ("obs_dim", int),
        ("action_dim", int),
        ("action_low", list),
        ("action_high", list),
        ("sha256", str),
        ("updates", int),
    ):
        assert isinstance(desc[key], kind), (key, desc)
    assert desc["version"] == 0 and desc["updates"] == 0
    assert (desc["obs_dim"], desc["action_dim"]) == (OBS_DIM, ACTION_DIM)
    assert desc["action_low"] == LOW and desc["action_high"] == HIGH
    w = c.get("/v1/policy/weights")
    assert w.status_code == 200
    assert w.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(w.content).hexdigest() == desc["sha256"]
    policy = load_policy(w.content, sha256=desc["sha256"])
    assert policy.version == 0 and (policy.obs_dim, policy.action_dim) == (OBS_DIM, ACTION_DIM)
    assert c.get("/v1/policy/weights", params={"version": 0}).content == w.content
    assert_error(c.get("/v1/policy/weights", params={"version": 7}), 404, "7")


def test_upload_follow_pin_and_list_policies(service: ThreadService) -> None:
    c = service.client()
    uploaded = actor_bytes(version=123)
    r = c.post(
        "/v1/admin/policies",
        content=uploaded,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 1}
    wait_for_version(c, 1)
    # The registry renumbered it: the file it serves says version 1, and its hash is reported.
    desc = c.get("/v1/policy").json()
    v1 = c.get("/v1/policy/weights", params={"version": 1}).content
    policy = load_policy(v1, sha256=desc["sha256"])
    assert policy.version == 1
    # Same weights as uploaded: the served deterministic action is the uploaded actor's.
    expected = load_policy(uploaded).act(OBS, deterministic=True).tolist()
    act = c.post("/v1/act", json={"obs": OBS, "deterministic": True}).json()
    assert act["policy_version"] == 1
    assert act["action"] == pytest.approx(expected, abs=1e-5)

    listed = c.get("/v1/admin/policies").json()
    assert set(listed) == {"policies"}
    assert [p["version"] for p in listed["policies"]] == [0, 1]
    for p in listed["policies"]:
        for key in ("version", "created_at", "updates", "sha256", "mean_episode_return"):
            assert key in p, (key, p)
        weights = c.get("/v1/policy/weights", params={"version": p["version"]}).content
        assert hashlib.sha256(weights).hexdigest() == p["sha256"]

    # Pin: at once, and it stays (the watcher does not follow the newest while pinned).
    pinned = c.post("/v1/admin/policy/pin", json={"version": 0})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["served_version"] == 0 and pinned.json()["mode"] == "pinned"
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 0
    time.sleep(0.3)
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 0
    assert c.get("/v1/policy").json()["version"] == 0
    assert_error(c.post("/v1/admin/policy/pin", json={"version": 5}), 404, "5")
    assert c.get("/v1/admin/status").json()["served_version"] == 0  # a failed pin changes nothing

    followed = c.post("/v1/admin/policy/follow")
    assert followed.status_code == 200, followed.text
    assert followed.json()["served_version"] == 1 and followed.json()["mode"] == "follow"
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 1
    text = c.get("/metrics").text
    assert metric(text, "robot_sac_served_version") == 1.0


def test_status_shape_and_episode_returns(service: ThreadService) -> None:
    c = service.client()
    # An episode of 3 steps driven by version 0, returns 1 + 2 + 3.
    episode = [
        transition("r1", "ep", s, reward=float(s + 1), terminated=(s == 2)) for s in range(3)
    ]
    assert c.post("/v1/transitions", json={"transitions": episode}).json()["accepted"] == 3
    r = c.get("/v1/admin/status")
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["served_version"] == 0
    assert status["mode"] == "follow"
    assert status["hold"] is False
    assert status["transitions"] == 3
    learner = status["learner"]
    assert learner["state"] == "offline"  # no learner runs here
    assert isinstance(learner["updates"], int)
    assert isinstance(learner["updates_per_s"], float)
    assert isinstance(learner["replay_size"], int)
    assert isinstance(learner["losses"], dict)
    assert "alpha" in learner
    assert isinstance(status["episodes"], list)
    assert status["episodes"][0]["version"] == 0
    assert status["episodes"][0]["mean_return"] == pytest.approx(6.0)
    listed = c.get("/v1/admin/policies").json()["policies"]
    assert listed[0]["mean_episode_return"] == pytest.approx(6.0)


def test_pause_and_resume_flip_learner_paused(service: ThreadService) -> None:
    c = service.client()
    assert c.get("/v1/admin/status").json()["learner_paused"] is False
    r = c.post("/v1/admin/learner/pause")
    assert r.status_code == 200, r.text
    assert r.json()["learner_paused"] is True
    assert r.json()["learner"]["state"] == "offline"
    assert c.get("/v1/admin/status").json()["learner_paused"] is True
    r = c.post("/v1/admin/learner/resume")
    assert r.status_code == 200, r.text
    assert r.json()["learner_paused"] is False
    assert c.get("/v1/admin/status").json()["learner_paused"] is False


def test_hold_answers_the_safe_action_until_released(service: ThreadService) -> None:
    c = service.client()
    r = c.post("/v1/admin/hold")
    assert r.status_code == 200, r.text
    assert r.json()["hold"] is True
    assert r.json()["hold_persisted"] is True  # a free store takes it before the answer
    assert service.state.store.control().hold is True
    act = c.post("/v1/act", json={"obs": OBS}).json()
    assert act == {"action": [0.0] * ACTION_DIM, "policy_version": 0, "hold": True}
    batch = c.post("/v1/act/batch", json={"obs": [OBS, OBS]}).json()
    assert batch["actions"] == [[0.0] * ACTION_DIM] * 2 and batch["hold"] is True
    assert c.get("/v1/admin/status").json()["hold"] is True
    assert metric(c.get("/metrics").text, "robot_sac_hold") == 1.0

    r = c.post("/v1/admin/release")
    assert r.status_code == 200, r.text
    assert r.json()["hold"] is False
    act = c.post("/v1/act", json={"obs": OBS, "deterministic": True}).json()
    assert act["hold"] is False and act["action"] != [0.0] * ACTION_DIM
    assert metric(c.get("/metrics").text, "robot_sac_hold") == 0.0


def test_hold_survives_a_restart(service: ThreadService) -> None:
    c = service.client()
    assert c.post("/v1/admin/hold").json()["hold"] is True
    service.stop()
    again = start_thread_service(service.data_dir)
    try:
        c2 = again.client()
        act = c2.post("/v1/act", json={"obs": OBS}).json()
        assert act["hold"] is True and act["action"] == [0.0] * ACTION_DIM
        assert c2.get("/v1/admin/status").json()["hold"] is True
        assert c2.post("/v1/admin/release").json()["hold"] is False
        assert c2.post("/v1/act", json={"obs": OBS}).json()["hold"] is False
    finally:
        again.stop()


def test_health_readiness_and_metrics(service: ThreadService) -> None:
    c = service.client()
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["policy_version"] == 0
    c.post("/v1/act", json={"obs": OBS})
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert metric(r.text, "robot_sac_served_version") == 0.0
    assert metric(r.text, "robot_sac_transitions_accepted_total") == 0.0
    assert metric(r.text, "robot_sac_requests_total", 'route="/v1/act",status="200"') == 1.0


def test_openapi_documents_every_request_body(service: ThreadService) -> None:
    """The hot routes read their bodies by hand; /docs must still show their schemas."""
    schema = service.client().get("/openapi.json").json()
    components = schema["components"]["schemas"]
    dangling = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(schema))) - set(components)
    assert not dangling, f"$refs to missing schemas: {dangling}"
    for path, model in (
        ("/v1/act", "ActRequest"),
        ("/v1/act/batch", "ActBatchRequest"),
        ("/v1/transitions", "TransitionsRequest"),
    ):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{model}"}
    transition = components["Transition"]
    assert transition["additionalProperties"] is False
    assert set(transition["required"]) >= {"robot_id", "episode_id", "step", "obs", "reward"}


# === 2. the auth matrix ==========================================================================

HEALTH, ROBOT, ADMIN = "health", "robot", "admin"
_UPLOAD: dict[str, bytes] = {}


def _upload_body() -> bytes:
    if "v" not in _UPLOAD:
        _UPLOAD["v"] = actor_bytes(version=9)
    return _UPLOAD["v"]


# (scope, method, path, body): every route of the v1 table, with a valid body.
ROUTES: list[tuple[str, str, str, Any]] = [
    (HEALTH, "GET", "/healthz", None),
    (HEALTH, "GET", "/readyz", None),
    (HEALTH, "GET", "/metrics", None),
    (ROBOT, "POST", "/v1/act", {"obs": OBS}),
    (ROBOT, "POST", "/v1/act/batch", {"obs": [OBS, OBS]}),
    (ROBOT, "POST", "/v1/transitions", {"transitions": [transition("auth", "e", 0)]}),
    (ROBOT, "GET", "/v1/policy", None),
    (ROBOT, "GET", "/v1/policy/weights", None),
    (ROBOT, "GET", "/v1/policy/weights?version=0", None),
    (ADMIN, "GET", "/v1/admin/status", None),
    (ADMIN, "GET", "/v1/admin/policies", None),
    (ADMIN, "POST", "/v1/admin/policies", _upload_body),
    (ADMIN, "POST", "/v1/admin/learner/pause", None),
    (ADMIN, "POST", "/v1/admin/learner/resume", None),
    (ADMIN, "POST", "/v1/admin/policy/pin", {"version": 0}),
    (ADMIN, "POST", "/v1/admin/policy/follow", None),
    (ADMIN, "POST", "/v1/admin/hold", None),
    (ADMIN, "POST", "/v1/admin/release", None),
]
TOKENS = {
    "none": None,
    "wrong": "not-a-valid-token",
    "robot": ROBOT_TOKEN,
    "operator": OPERATOR_TOKEN,
}
EXPECTED = {
    HEALTH: {"none": 200, "wrong": 200, "robot": 200, "operator": 200},
    ROBOT: {"none": 401, "wrong": 401, "robot": 200, "operator": 200},
    ADMIN: {"none": 401, "wrong": 401, "robot": 403, "operator": 200},
}


def _send(
    c: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    if callable(body):
        return c.request(
            method,
            path,
            content=body(),
            headers={"content-type": "application/octet-stream", **(headers or {})},
        )
    if body is None:
        return c.request(method, path, headers=headers)
    return c.request(method, path, json=body, headers=headers)


def _reset(svc: ThreadService) -> None:
    """Undo what an admin POST of the matrix may have changed."""
    op = svc.client(OPERATOR_TOKEN)
    assert op.post("/v1/admin/release").status_code == 200
    assert op.post("/v1/admin/policy/follow").status_code == 200
    assert op.post("/v1/admin/learner/resume").status_code == 200


@pytest.mark.parametrize("who", list(TOKENS))
@pytest.mark.parametrize(
    ("scope", "method", "path", "body"),
    ROUTES,
    ids=[f"{m} {p}" for _, m, p, _ in ROUTES],
)
def test_auth_matrix(
    shared_secured: ThreadService, scope: str, method: str, path: str, body: Any, who: str
) -> None:
    c = shared_secured.client(TOKENS[who])
    store = shared_secured.state.store
    before = (store.transition_count(), store.control(), store.latest_policy().version)
    try:
        r = _send(c, method, path, body)
        after = (store.transition_count(), store.control(), store.latest_policy().version)
    finally:
        if scope == ADMIN and method == "POST":
            _reset(shared_secured)
    want = EXPECTED[scope][who]
    if want == 200:
        assert 200 <= r.status_code < 300, (r.status_code, r.text)
        return
    detail = assert_error(r, want)
    assert after == before  # a refused request changed nothing
    if want == 401:
        assert r.headers.get("www-authenticate") == "Bearer"
        assert "token" in detail
    else:
        assert "operator" in detail
        assert "www-authenticate" not in r.headers


def test_auth_matrix_robot_token_changes_nothing(shared_secured: ThreadService) -> None:
    """The 403s above are refusals, not side effects: a robot token cannot hold or pin."""
    robot = shared_secured.client(ROBOT_TOKEN)
    assert robot.post("/v1/admin/hold").status_code == 403
    assert robot.post("/v1/admin/policy/pin", json={"version": 0}).status_code == 403
    assert robot.post("/v1/admin/learner/pause").status_code == 403
    status = shared_secured.client(OPERATOR_TOKEN).get("/v1/admin/status").json()
    assert status["hold"] is False and status["mode"] == "follow"
    assert status["learner_paused"] is False
    assert robot.post("/v1/act", json={"obs": OBS}).json()["hold"] is False


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "",
        "Basic xyz",
        f"Basic {ROBOT_TOKEN}",
        f"Token {OPERATOR_TOKEN}",
        OPERATOR_TOKEN,
        f"Bearer {ROBOT_TOKEN}x",
        f"Bearer {OPERATOR_TOKEN[:-1]}",
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v1/act", {"obs": OBS}), ("GET", "/v1/admin/status", None)],
)
def test_malformed_authorization_header_is_401(
    shared_secured: ThreadService, header: str, method: str, path: str, body: Any
) -> None:
    c = shared_secured.client()
    r = _send(c, method, path, body, headers={"Authorization": header})
    assert_error(r, 401, "token")
    assert r.headers.get("www-authenticate") == "Bearer"


# === 3. bad input ================================================================================


def _obs(values: str) -> bytes:
    return raw_json('{"obs": [' + values + "]}")


def _transition_with(**kw: Any) -> dict[str, Any]:
    return {"transitions": [{**transition("bad", "e", 0), **kw}]}


def _transition_without(field: str) -> dict[str, Any]:
    t = transition("bad", "e", 0)
    del t[field]
    return {"transitions": [t]}


_ZEROS_16 = ", 0.0" * (OBS_DIM - 1)
_TRANSITION_NAN_REWARD = json.dumps(_transition_with()).replace('"reward": 1.0', '"reward": NaN')
_TRANSITION_INF_OBS = json.dumps(_transition_with(obs=[0.5] * OBS_DIM)).replace(
    "0.5", "Infinity", 1
)
assert "NaN" in _TRANSITION_NAN_REWARD and "Infinity" in _TRANSITION_INF_OBS

# (id, method, path, body, status, words the detail must contain). A dict/list/str/int body is
# sent as JSON, bytes as they are; status is a code or a tuple of acceptable codes.
# fmt: off
BAD_INPUTS: list[tuple[str, str, str, Any, int | tuple[int, ...], tuple[str, ...]]] = [
    # /v1/act
    ("act-obs-short", "POST", "/v1/act", {"obs": [0.0] * 16}, 422, ("obs", "17")),
    ("act-obs-long", "POST", "/v1/act", {"obs": [0.0] * 18}, 422, ("obs", "17")),
    ("act-obs-empty", "POST", "/v1/act", {"obs": []}, 422, ("obs",)),
    ("act-obs-nan", "POST", "/v1/act", _obs("NaN" + _ZEROS_16), 422, ("obs",)),
    ("act-obs-inf", "POST", "/v1/act", _obs("Infinity" + _ZEROS_16), 422, ("obs",)),
    ("act-obs-neg-inf", "POST", "/v1/act", _obs("-Infinity" + _ZEROS_16), 422, ("obs",)),
    ("act-obs-1e999", "POST", "/v1/act", _obs("1e999" + _ZEROS_16), 422, ("obs",)),
    ("act-obs-strings", "POST", "/v1/act", {"obs": ["1.0"] * OBS_DIM}, 422, ("obs",)),
    ("act-obs-bools", "POST", "/v1/act", {"obs": [True] * OBS_DIM}, 422, ("obs",)),
    ("act-obs-null-items", "POST", "/v1/act", {"obs": [None] * OBS_DIM}, 422, ("obs",)),
    ("act-obs-null", "POST", "/v1/act", {"obs": None}, 422, ("obs",)),
    ("act-obs-number", "POST", "/v1/act", {"obs": 1.0}, 422, ("obs",)),
    ("act-obs-nested", "POST", "/v1/act", {"obs": [OBS]}, 422, ("obs",)),
    ("act-obs-missing", "POST", "/v1/act", {}, 422, ("obs",)),
    ("act-misspelt-field", "POST", "/v1/act", {"obs": OBS, "determinstic": True}, 422,
     ("determinstic",)),
    ("act-deterministic-string", "POST", "/v1/act", {"obs": OBS, "deterministic": "true"}, 422,
     ("deterministic",)),
    ("act-deterministic-int", "POST", "/v1/act", {"obs": OBS, "deterministic": 1}, 422,
     ("deterministic",)),
    ("act-robot-id-empty", "POST", "/v1/act", {"obs": OBS, "robot_id": ""}, 422, ("robot_id",)),
    ("act-robot-id-number", "POST", "/v1/act", {"obs": OBS, "robot_id": 7}, 422, ("robot_id",)),
    ("act-malformed-json", "POST", "/v1/act", raw_json('{"obs": [0.0,'), 400, ("JSON",)),
    ("act-not-utf8", "POST", "/v1/act", b'{"obs": "\xff\xfe"}', 400, ()),
    ("act-body-list", "POST", "/v1/act", [OBS], 422, ("object",)),
    ("act-body-string", "POST", "/v1/act", "obs", 422, ("object",)),
    ("act-body-number", "POST", "/v1/act", 3, 422, ("object",)),
    ("act-body-null", "POST", "/v1/act", raw_json("null"), 422, ()),
    ("act-body-empty", "POST", "/v1/act", b"", (400, 422), ()),
    # /v1/act/batch
    ("batch-ragged", "POST", "/v1/act/batch", {"obs": [OBS, [0.0] * 16]}, 422, ("obs[1]", "17")),
    ("batch-empty", "POST", "/v1/act/batch", {"obs": []}, 422, ("obs",)),
    ("batch-flat", "POST", "/v1/act/batch", {"obs": OBS}, 422, ("obs",)),
    ("batch-nan", "POST", "/v1/act/batch",
     raw_json('{"obs": [[' + ", ".join(["0.0"] * OBS_DIM) + "], [NaN" + _ZEROS_16 + "]]}"),
     422, ("obs[1]",)),
    ("batch-strings", "POST", "/v1/act/batch", {"obs": [["1"] * OBS_DIM]}, 422, ("obs",)),
    ("batch-too-many-rows", "POST", "/v1/act/batch", {"obs": [[0] * OBS_DIM] * 4097}, 422,
     ("obs",)),
    ("batch-misspelt-field", "POST", "/v1/act/batch", {"obs": [OBS], "determinstic": True}, 422,
     ("determinstic",)),
    ("batch-malformed-json", "POST", "/v1/act/batch", raw_json('{"obs": [[}'), 400, ("JSON",)),
    # /v1/transitions
    ("tr-obs-short", "POST", "/v1/transitions", _transition_with(obs=[0.0] * 16), 422,
     ("obs", "17")),
    ("tr-action-long", "POST", "/v1/transitions", _transition_with(action=[0.0] * 7), 422,
     ("action", "6")),
    ("tr-next-obs-short", "POST", "/v1/transitions", _transition_with(next_obs=[0.0] * 3), 422,
     ("next_obs", "17")),
    ("tr-reward-nan", "POST", "/v1/transitions", raw_json(_TRANSITION_NAN_REWARD), 422,
     ("reward",)),
    ("tr-obs-inf", "POST", "/v1/transitions", raw_json(_TRANSITION_INF_OBS), 422, ("obs",)),
    ("tr-reward-string", "POST", "/v1/transitions", _transition_with(reward="1.0"), 422,
     ("reward",)),
    ("tr-step-negative", "POST", "/v1/transitions", _transition_with(step=-1), 422, ("step",)),
    ("tr-step-float", "POST", "/v1/transitions", _transition_with(step=1.5), 422, ("step",)),
    ("tr-step-string", "POST", "/v1/transitions", _transition_with(step="1"), 422, ("step",)),
    ("tr-terminated-int", "POST", "/v1/transitions", _transition_with(terminated=0), 422,
     ("terminated",)),
    ("tr-terminated-string", "POST", "/v1/transitions", _transition_with(terminated="false"),
     422, ("terminated",)),
    ("tr-truncated-null", "POST", "/v1/transitions", _transition_with(truncated=None), 422,
     ("truncated",)),
    ("tr-policy-version-negative", "POST", "/v1/transitions",
     _transition_with(policy_version=-1), 422, ("policy_version",)),
    ("tr-robot-id-empty", "POST", "/v1/transitions", _transition_with(robot_id=""), 422,
     ("robot_id",)),
    ("tr-missing-reward", "POST", "/v1/transitions", _transition_without("reward"), 422,
     ("reward",)),
    ("tr-missing-robot-id", "POST", "/v1/transitions", _transition_without("robot_id"), 422,
     ("robot_id",)),
    ("tr-missing-terminated", "POST", "/v1/transitions", _transition_without("terminated"), 422,
     ("terminated",)),
    ("tr-unknown-field", "POST", "/v1/transitions", _transition_with(rewrad=1.0), 422,
     ("rewrad",)),
    ("tr-empty-list", "POST", "/v1/transitions", {"transitions": []}, 422, ("transitions",)),
    ("tr-not-a-list", "POST", "/v1/transitions", {"transitions": transition("a", "b", 0)}, 422,
     ("transitions",)),
    ("tr-body-list", "POST", "/v1/transitions", [transition("a", "b", 0)], 422, ("object",)),
    ("tr-malformed-json", "POST", "/v1/transitions", raw_json('{"transitions": ['), 400,
     ("JSON",)),
    # the policy
    ("weights-unknown-version", "GET", "/v1/policy/weights?version=42", None, 404, ("42",)),
    ("weights-negative-version", "GET", "/v1/policy/weights?version=-1", None, 422,
     ("version",)),
    ("weights-version-not-int", "GET", "/v1/policy/weights?version=abc", None, 422,
     ("version",)),
    # admin
    ("pin-unknown-version", "POST", "/v1/admin/policy/pin", {"version": 42}, 404, ("42",)),
    ("pin-negative", "POST", "/v1/admin/policy/pin", {"version": -1}, 422, ("version",)),
    ("pin-string", "POST", "/v1/admin/policy/pin", {"version": "0"}, 422, ("version",)),
    ("pin-missing", "POST", "/v1/admin/policy/pin", {}, 422, ("version",)),
    ("pin-unknown-field", "POST", "/v1/admin/policy/pin", {"version": 0, "force": True}, 422,
     ("force",)),
    ("pin-malformed-json", "POST", "/v1/admin/policy/pin", raw_json("{version: 0}"), 400,
     ("JSON",)),
]
# fmt: on


def _send_bad(c: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if body is None:
        return c.request(method, path)
    if isinstance(body, bytes):
        return c.request(method, path, content=body, headers=JSON)
    return c.request(method, path, content=json.dumps(body).encode(), headers=JSON)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "mentions"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_clear_4xx(
    shared_service: ThreadService,
    method: str,
    path: str,
    body: Any,
    status: int | tuple[int, ...],
    mentions: tuple[str, ...],
) -> None:
    c = shared_service.client()
    assert_error(_send_bad(c, method, path, body), status, *mentions)


HOT_BAD_INPUTS = [case for case in BAD_INPUTS if case[2].startswith(("/v1/act", "/v1/transitions"))]


@pytest.fixture(scope="module")
def framework_act_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    """Act and transitions served by the FastAPI routes (the fast path off), 250 kB limit."""
    svc = start_thread_service(
        tmp_path_factory.mktemp("framework") / "data",
        fast_path=False,
        max_body_bytes=250_000,
        max_act_body_bytes=250_000,
    )
    yield svc
    svc.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "mentions"),
    [case[1:] for case in HOT_BAD_INPUTS],
    ids=[case[0] for case in HOT_BAD_INPUTS],
)
def test_bad_hot_path_input_without_the_fast_path(
    framework_act_service: ThreadService,
    method: str,
    path: str,
    body: Any,
    status: int | tuple[int, ...],
    mentions: tuple[str, ...],
) -> None:
    c = framework_act_service.client()
    assert_error(_send_bad(c, method, path, body), status, *mentions)


def test_hot_routes_without_the_fast_path(framework_act_service: ThreadService) -> None:
    c = framework_act_service.client()
    one = c.post("/v1/act", json={"obs": OBS, "deterministic": True})
    assert one.status_code == 200, one.text
    assert set(one.json()) == {"action", "policy_version", "hold"}
    assert_actions([one.json()["action"]])
    many = c.post("/v1/act/batch", json={"obs": [OBS, OBS], "deterministic": True})
    assert many.status_code == 200, many.text
    for row in many.json()["actions"]:
        assert row == pytest.approx(one.json()["action"], abs=1e-5)
    big = json.dumps({"obs": [0.0] * 60_000}).encode()
    assert len(big) > 250_000
    assert_error(c.post("/v1/act", content=big, headers=JSON), 413, "250000")
    r = c.post("/v1/act", content=_chunks(big, 10_000), headers=JSON)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "250000")
    assert 'status="500"' not in c.get("/metrics").text
    batch = [transition("framework", "e0", i) for i in range(3)]
    for want in ({"accepted": 3, "duplicates": 0}, {"accepted": 0, "duplicates": 3}):
        r = c.post("/v1/transitions", json={"transitions": batch})
        assert r.status_code == 200, r.text
        assert r.json() == want


def test_act_auth_without_the_fast_path(tmp_path: Path) -> None:
    svc = start_thread_service(
        tmp_path / "d", fast_path=False, robot_token=ROBOT_TOKEN, operator_token=OPERATOR_TOKEN
    )
    try:
        for path, body in (("/v1/act", {"obs": OBS}), ("/v1/act/batch", {"obs": [OBS]})):
            for token, want in ((None, 401), ("wrong", 401), ("Basic", 401)):
                headers = {"Authorization": token} if token == "Basic" else None
                r = svc.client(None if token == "Basic" else token).post(
                    path, json=body, headers=headers
                )
                assert_error(r, want, "token")
                assert r.headers.get("www-authenticate") == "Bearer"
            for token in (ROBOT_TOKEN, OPERATOR_TOKEN):
                assert svc.client(token).post(path, json=body).status_code == 200
    finally:
        svc.stop()


def test_bad_inputs_change_nothing_and_crash_nothing(service: ThreadService) -> None:
    """All the bad inputs on one service: nothing stored, no 500, a good act still answers."""
    c = service.client()
    before = c.get("/v1/admin/status").json()
    for _, method, path, body, status, _ in BAD_INPUTS:
        assert_error(_send_bad(c, method, path, body), status)
    after = c.get("/v1/admin/status").json()
    assert service.state.store.transition_count() == 0
    assert after["transitions"] == 0
    for key in ("served_version", "latest_version", "mode", "hold", "learner_paused"):
        assert after[key] == before[key], key
    r = c.post("/v1/act", json={"obs": OBS})
    assert r.status_code == 200
    assert_actions([r.json()["action"]])
    text = c.get("/metrics").text
    assert 'status="500"' not in text
    assert metric(text, "robot_sac_transitions_accepted_total") == 0.0
    # Each refusal was counted with its own status.
    assert metric(text, "robot_sac_requests_total", 'route="/v1/act",status="422"') is not None
    assert metric(text, "robot_sac_requests_total", 'route="/v1/act",status="400"') is not None


def test_oversized_body_with_content_length_is_413(small_service: ThreadService) -> None:
    c = small_service.client()
    big_act = json.dumps({"obs": [0.0] * 2000}).encode()
    assert len(big_act) > 4096
    assert_error(c.post("/v1/act", content=big_act, headers=JSON), 413, "4096")
    big_batch = json.dumps({"obs": [OBS] * 50}).encode()
    assert_error(c.post("/v1/act/batch", content=big_batch, headers=JSON), 413, "4096")
    big_tr = json.dumps({"transitions": [transition("r", "e", s) for s in range(20)]}).encode()
    assert_error(c.post("/v1/transitions", content=big_tr, headers=JSON), 413, "4096")
    assert small_service.state.store.transition_count() == 0
    upload = actor_bytes()
    assert len(upload) > 4096
    assert_error(c.post("/v1/admin/policies", content=upload, headers=OCTET), 413, "4096")
    assert c.get("/v1/admin/status").json()["latest_version"] == 0
    # The service goes on.
    assert c.post("/v1/act", json={"obs": OBS}).status_code == 200
    assert 'status="500"' not in c.get("/metrics").text


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_chunked_body_under_the_limit_is_accepted(small_service: ThreadService) -> None:
    c = small_service.client()
    body = json.dumps({"obs": OBS}).encode()
    r = c.post("/v1/act", content=_chunks(body, 100), headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text
    body = json.dumps({"transitions": [transition("r", "e", 0)]}).encode()
    r = c.post("/v1/transitions", content=_chunks(body, 100), headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}


def test_chunked_upload_over_the_limit_is_413(small_service: ThreadService) -> None:
    c = small_service.client()
    r = c.post("/v1/admin/policies", content=_chunks(actor_bytes()), headers=OCTET)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "4096")
    assert c.get("/v1/admin/status").json()["latest_version"] == 0


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/act", {"obs": [0.0] * 2000}),
        ("/v1/act/batch", {"obs": [OBS] * 50}),
        ("/v1/transitions", {"transitions": [transition("r", "e", s) for s in range(20)]}),
        ("/v1/admin/policy/pin", {"version": 0, "pad": "x" * 5000}),
    ],
    ids=["act", "act-batch", "transitions", "pin"],
)
def test_chunked_json_body_over_the_limit_is_413(
    small_service: ThreadService, path: str, payload: dict[str, Any]
) -> None:
    c = small_service.client()
    r = c.post(path, content=_chunks(json.dumps(payload).encode()), headers=JSON)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "4096")
    assert small_service.state.store.transition_count() == 0
    assert c.post("/v1/act", json={"obs": OBS}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/v1/policy/weights?version={2**63}", None),
        ("POST", "/v1/admin/policy/pin", {"version": 2**63}),
    ],
    ids=["weights", "pin"],
)
def test_huge_unknown_version_is_4xx_not_500(
    service: ThreadService, method: str, path: str, body: Any
) -> None:
    c = service.client()
    r = _send_bad(c, method, path, body)
    assert r.status_code in (404, 422), (r.status_code, r.text)
    assert_error(r, r.status_code, "version")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"policy_version": 2**63}, "policy_version"),
        ({"obs": [1e39] * OBS_DIM}, "obs"),
        ({"action": [-1e300] * ACTION_DIM}, "action"),
    ],
    ids=["policy-version-2**63", "obs-1e39", "action-1e300"],
)
def test_unstorable_transition_is_422_not_500(
    service: ThreadService, overrides: dict[str, Any], field: str
) -> None:
    c = service.client()
    r = c.post("/v1/transitions", json={"transitions": [transition("r", "e", 0, **overrides)]})
    assert_error(r, 422, field)
    assert service.state.store.transition_count() == 0


# === 4. policy uploads that fail a check =========================================================


def _nan_weight() -> bytes:
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, ACTION_DIM, (32, 32))
    with torch.no_grad():
        next(actor.parameters()).view(-1)[3] = float("nan")
    return policy_bytes(actor, LOW, HIGH, version=1)


def _shapes_lie() -> bytes:
    """Tensors of hidden (32, 32) but metadata claiming hidden (64, 64)."""
    good = actor_bytes()
    tensors = safetensors.torch.load(good)
    header_len = int.from_bytes(good[:8], "little")
    meta = json.loads(good[8 : 8 + header_len])["__metadata__"]
    return safetensors.torch.save(tensors, metadata={**meta, "hidden": "[64, 64]"})


def _float64() -> bytes:
    good = actor_bytes()
    tensors = {k: v.double() for k, v in safetensors.torch.load(good).items()}
    header_len = int.from_bytes(good[:8], "little")
    meta = json.loads(good[8 : 8 + header_len])["__metadata__"]
    return safetensors.torch.save(tensors, metadata=meta)


def _no_metadata() -> bytes:
    return safetensors.torch.save(safetensors.torch.load(actor_bytes()))


def _truncated() -> bytes:
    good = actor_bytes()
    return good[: len(good) - 100]


def _truncated_header() -> bytes:
    return actor_bytes()[:50]


UPLOAD_REFUSALS: list[tuple[str, Any, str]] = [
    ("nan-weight", _nan_weight, "(finite)"),
    ("wrong-obs-dim", lambda: actor_bytes(obs_dim=16), "(task)"),
    ("wrong-bounds", lambda: actor_bytes(low=[-2.0] * 6, high=[2.0] * 6), "(task)"),
    ("shapes-differ-from-metadata", _shapes_lie, "(shapes)"),
    ("float64-tensors", _float64, "(dtype)"),
    ("no-metadata", _no_metadata, "(metadata)"),
    ("truncated-data", _truncated, "(format)"),
    ("truncated-header", _truncated_header, "(format)"),
    ("random-bytes", lambda: random.Random(0).randbytes(2000), "(format)"),
    ("json-text", lambda: b'{"weights": [1, 2, 3]}', "(format)"),
    ("empty", lambda: b"", "version file"),
]


@pytest.mark.parametrize(
    ("make", "check"),
    [case[1:] for case in UPLOAD_REFUSALS],
    ids=[case[0] for case in UPLOAD_REFUSALS],
)
def test_invalid_upload_is_refused_and_changes_nothing(
    service: ThreadService, make: Any, check: str
) -> None:
    c = service.client()
    before = c.get("/v1/admin/policies").json()
    r = c.post(
        "/v1/admin/policies",
        content=make(),
        headers={"content-type": "application/octet-stream"},
    )
    assert_error(r, 422, check)
    assert c.get("/v1/admin/policies").json() == before
    assert service.state.store.latest_policy().version == 0
    status = c.get("/v1/admin/status").json()
    assert status["latest_version"] == 0 and status["served_version"] == 0
    assert c.get("/readyz").status_code == 200
    act = c.post("/v1/act", json={"obs": OBS})
    assert act.status_code == 200 and act.json()["policy_version"] == 0
    assert 'status="500"' not in c.get("/metrics").text


def test_refused_uploads_do_not_use_up_version_numbers(service: ThreadService) -> None:
    c = service.client()
    for _, make, _ in UPLOAD_REFUSALS:
        assert c.post("/v1/admin/policies", content=make(), headers=OCTET).status_code == 422
    r = c.post("/v1/admin/policies", content=actor_bytes(version=50), headers=OCTET)
    assert r.status_code == 200 and r.json() == {"version": 1}
    wait_for_version(c, 1)
    assert 'status="500"' not in c.get("/metrics").text


@pytest.mark.parametrize(
    "make",
    [
        lambda: actor_bytes(action_dim=5),
        lambda: actor_bytes(low=[0.5] * ACTION_DIM, high=[1.0] * ACTION_DIM),
    ],
    ids=["wrong-action-dim", "bounds-without-zero"],
)
def test_upload_for_another_action_space_is_422_not_500(service: ThreadService, make: Any) -> None:
    c = service.client()
    r = c.post("/v1/admin/policies", content=make(), headers=OCTET)
    assert_error(r, 422, "(task)")
    assert service.state.store.latest_policy().version == 0


def test_upload_with_huge_updates_is_refused_without_using_a_version(
    service: ThreadService,
) -> None:
    c = service.client()
    torch.manual_seed(0)
    data = policy_bytes(Actor(OBS_DIM, ACTION_DIM, (8, 8)), LOW, HIGH, version=1)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    data = safetensors.torch.save(
        safetensors.torch.load(data), metadata={**meta, "updates": str(2**63)}
    )
    assert_error(c.post("/v1/admin/policies", content=data, headers=OCTET), 422, "updates")
    assert c.post("/v1/admin/policies", content=actor_bytes(), headers=OCTET).json() == {
        "version": 1
    }


# === 5. malformed robot inputs never reach the store =============================================


def test_bad_transitions_never_reach_the_store(service: ThreadService) -> None:
    c = service.client()
    good = [transition("r1", "e1", s) for s in range(2)]
    assert c.post("/v1/transitions", json={"transitions": good}).json()["accepted"] == 2
    store = service.state.store
    assert store.transition_count() == 2
    for _, method, path, body, status, _ in BAD_INPUTS:
        if path == "/v1/transitions":
            assert_error(_send_bad(c, method, path, body), status)
    # A batch with one bad transition among good ones is refused whole.
    mixed = [transition("r1", "e1", 5), transition("r1", "e1", 6, obs=[0.0] * 3)]
    assert_error(c.post("/v1/transitions", json={"transitions": mixed}), 422, "transitions[1]")
    assert store.transition_count() == 2
    assert c.get("/v1/admin/status").json()["transitions"] == 2
    assert len(store.read_after(0, 100)) == 2
    assert metric(c.get("/metrics").text, "robot_sac_transitions_accepted_total") == 2.0


# === races between the registry watcher and the operator's controls =============================


class SlowControlReads:
    """The store as the registry watcher sees it, with control reads that take 0.3 s to return.

    A stand-in for a slow store (PostgreSQL over a network): the value is read at once and
    delivered late, so the watcher holds a stale control state while operators change it.
    """

    def __init__(self, store: Any, delay: float = 0.3) -> None:
        self._store, self._delay = store, delay
        self.reading = threading.Event()

    def control(self) -> Any:
        value = self._store.control()
        self.reading.set()
        time.sleep(self._delay)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_hold_holds_while_the_watcher_reads_a_stale_control(service: ThreadService) -> None:
    c = service.client()
    slow = SlowControlReads(service.state.store)
    service.state.serving.store = slow
    slow.reading.clear()
    assert slow.reading.wait(2)  # a watcher read (not held) is in flight
    assert c.post("/v1/admin/hold").json()["hold"] is True
    deadline = time.monotonic() + 1.0
    answers = []
    while time.monotonic() < deadline:
        answers.append(c.post("/v1/act", json={"obs": OBS}).json()["hold"])
        time.sleep(0.01)
    assert all(answers), f"{answers.count(False)} of {len(answers)} acts were not held"


def test_pin_holds_while_the_watcher_reads_a_stale_control(service: ThreadService) -> None:
    c = service.client()
    assert c.post("/v1/admin/policies", content=actor_bytes(), headers=OCTET).json() == {
        "version": 1
    }
    wait_for_version(c, 1)
    slow = SlowControlReads(service.state.store)
    service.state.serving.store = slow
    slow.reading.clear()
    assert slow.reading.wait(2)  # a watcher read (mode follow) is in flight
    assert c.post("/v1/admin/policy/pin", json={"version": 0}).json()["served_version"] == 0
    deadline = time.monotonic() + 1.0
    versions = []
    while time.monotonic() < deadline:
        versions.append(c.post("/v1/act", json={"obs": OBS}).json()["policy_version"])
        time.sleep(0.01)
    assert set(versions) == {0}, f"{versions.count(1)} of {len(versions)} acts used version 1"


# --- 6. version retention -----------------------------------------------------------------------
# The learner prunes through its own store on the same data; here a second store plays that part.


def upload(c: httpx.Client, seed: int) -> int:
    r = c.post("/v1/admin/policies", content=actor_bytes(seed=seed), headers=OCTET)
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def wait_for_report(service: ThreadService, learner_store: Store, version: int) -> None:
    replica = service.state.serving.replica_id
    deadline = time.monotonic() + 5.0
    while learner_store.served_versions(60.0).get(replica) != version:
        assert time.monotonic() < deadline, learner_store.served_versions(60.0)
        time.sleep(0.02)


@pytest.fixture
def learner_store(service: ThreadService) -> Iterator[Store]:
    store = open_store(CHEETAH, service.data_dir)
    yield store
    store.close()


def test_weights_and_pin_of_a_pruned_version_are_404(
    service: ThreadService, learner_store: Store
) -> None:
    c = service.client()
    assert [upload(c, seed) for seed in range(1, 5)] == [1, 2, 3, 4]
    wait_for_version(c, 4)
    wait_for_report(service, learner_store, 4)  # the service says what it serves
    pinned = c.post("/v1/admin/policy/pin", json={"version": 2})
    assert pinned.status_code == 200, pinned.text
    # reported before the pin answers, so retention cannot miss it
    assert learner_store.served_versions(60.0) == {service.state.serving.replica_id: 2}

    assert sorted(learner_store.prune_policies(1, 0)) == [0, 1, 3]  # 4 newest, 2 pinned
    listed = c.get("/v1/admin/policies").json()["policies"]
    assert [p["version"] for p in listed] == [2, 4]
    for gone in (0, 1, 3):
        assert_error(c.get("/v1/policy/weights", params={"version": gone}), 404, str(gone))
    for kept in listed:
        r = c.get("/v1/policy/weights", params={"version": kept["version"]})
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == kept["sha256"]
    assert_error(c.post("/v1/admin/policy/pin", json={"version": 3}), 404, "3")
    status = c.get("/v1/admin/status").json()
    assert (status["mode"], status["served_version"]) == (
        "pinned",
        2,
    )  # the failed pin changed nothing
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 2

    # Following again: 4 is served and reported, and the unpinned 2 goes at the next prune.
    assert c.post("/v1/admin/policy/follow").json()["served_version"] == 4
    wait_for_report(service, learner_store, 4)
    assert learner_store.prune_policies(1, 0) == [2]
    assert_error(c.get("/v1/policy/weights", params={"version": 2}), 404, "2")
    assert_error(c.post("/v1/admin/policy/pin", json={"version": 2}), 404, "2")
    r = c.get("/v1/policy/weights")  # the served version's
    assert r.status_code == 200 and r.headers["X-Policy-Version"] == "4"
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 4


def test_weights_of_a_version_deleted_during_the_request_are_404(
    service: ThreadService, learner_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = service.client()
    upload(c, 1)
    wait_for_version(c, 1)
    store = service.state.store
    read = store.policy_bytes

    def deleted_first(record: Any) -> bytes:  # retention strikes between look-up and read
        learner_store.delete_policies([record.version])
        return read(record)

    monkeypatch.setattr(store, "policy_bytes", deleted_first)
    assert_error(c.get("/v1/policy/weights", params={"version": 0}), 404, "0")
    monkeypatch.undo()
    assert c.get("/v1/policy/weights", params={"version": 1}).status_code == 200


def test_serving_goes_on_when_reporting_the_served_version_fails(
    service: ThreadService, learner_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = service.client()
    wait_for_report(service, learner_store, 0)
    store = service.state.store
    monkeypatch.setattr(serving_module, "REPORT_RETRY_S", 0.1)
    report = store.report_served
    failures: list[int] = []

    def refuse(replica: str, version: int) -> None:
        failures.append(version)
        raise StoreUnavailable("disk I/O error (simulated)")

    monkeypatch.setattr(store, "report_served", refuse)
    assert upload(c, 1) == 1
    wait_for_version(c, 1)  # swapped all the same
    assert c.post("/v1/act", json={"obs": OBS}).json()["policy_version"] == 1
    assert c.get("/readyz").status_code == 200
    deadline = time.monotonic() + 5.0
    while len(failures) < 3:  # tried again, not once a poll (0.05 s) nor given up
        assert time.monotonic() < deadline, failures
        time.sleep(0.02)
    assert set(failures) == {1}
    assert learner_store.served_versions(60.0) == {service.state.serving.replica_id: 0}
    monkeypatch.setattr(store, "report_served", report)  # the store takes reports again
    wait_for_report(service, learner_store, 1)


def test_the_served_version_is_reported_again_periodically(
    service: ThreadService, learner_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serving_module.REPORT_SERVED_S * 10 <= SERVED_WITHIN_S  # many periods per window
    wait_for_report(service, learner_store, 0)
    replica = service.state.serving.replica_id
    monkeypatch.setattr(serving_module, "REPORT_SERVED_S", 0.2)
    for _ in range(4):
        time.sleep(0.5)
        # a report within the last 0.5 s: the watcher reports without a swap
        assert learner_store.served_versions(0.5) == {replica: 0}
