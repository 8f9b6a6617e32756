"""Micro-batching and hot-swapping under concurrent load, over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch

from robot_sac.networks import Actor
from robot_sac.policy import load_policy, policy_bytes
from tests.servers import ThreadService, start_thread_service


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def new_version_bytes(seed: int, obs_dim: int = 17) -> bytes:
    torch.manual_seed(seed)
    return policy_bytes(Actor(obs_dim, 6), [-1.0] * 6, [1.0] * 6, version=0)


def test_simultaneous_requests_share_one_forward_pass(tmp_path: Path):
    # A 50 ms window makes the coalescing deterministic enough to count passes.
    svc = start_thread_service(tmp_path / "data", max_wait_ms=50.0)
    try:
        c = svc.client()
        before = metric(c.get("/metrics").text, "robot_sac_forward_passes_total")
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((16, 17)).astype(np.float32)

        async def fire() -> list[dict]:
            async with httpx.AsyncClient(base_url=svc.url, timeout=30) as ac:
                calls = [
                    ac.post("/v1/act", json={"obs": o.tolist(), "deterministic": True}) for o in obs
                ]
                return [r.json() for r in await asyncio.gather(*calls)]

        answers = asyncio.run(fire())
        after = metric(c.get("/metrics").text, "robot_sac_forward_passes_total")
        assert after - before <= 4, f"{after - before} forward passes for 16 simultaneous requests"
        # ...and each request got its own row back: compare with the served file, acted locally.
        pi = load_policy(c.get("/v1/policy/weights").content)
        expected = pi.act(obs, deterministic=True)
        got = np.asarray([a["action"] for a in answers], np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert {a["policy_version"] for a in answers} == {0}
        batch_count = metric(c.get("/metrics").text, "robot_sac_batch_size_count")
        batch_sum = metric(c.get("/metrics").text, "robot_sac_batch_size_sum")
        assert batch_sum >= 16 and batch_sum / batch_count > 1.0
    finally:
        svc.stop()


def test_act_batch_answers_every_row_in_one_pass(service: ThreadService):
    c = service.client()
    obs = np.random.default_rng(1).standard_normal((50, 17)).astype(np.float32)
    before = metric(c.get("/metrics").text, "robot_sac_forward_passes_total")
    r = c.post("/v1/act/batch", json={"obs": obs.tolist(), "deterministic": True}).json()
    assert metric(c.get("/metrics").text, "robot_sac_forward_passes_total") - before == 1
    pi = load_policy(c.get("/v1/policy/weights").content)
    np.testing.assert_allclose(np.asarray(r["actions"]), pi.act(obs, deterministic=True), atol=1e-5)


def corrupt_versions() -> dict[str, bytes]:
    good = new_version_bytes(99)
    tensors = safetensors.torch.load(good)
    header_len = struct.unpack("<Q", good[:8])[0]
    import json

    meta = json.loads(good[8 : 8 + header_len])["__metadata__"]
    nan = dict(tensors)
    nan["net.2.weight"] = nan["net.2.weight"].clone()
    nan["net.2.weight"][0, 0] = math.nan
    wrong_shape = dict(tensors)
    wrong_shape["net.2.weight"] = torch.zeros(128, 256)
    return {
        "nan": safetensors.torch.save(nan, metadata=meta),
        "wrong_shape": safetensors.torch.save(wrong_shape, metadata=meta),
        "truncated": good[: len(good) - 1000],
        "other_task": new_version_bytes(5, obs_dim=11),
    }


def register_torn(store, data: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    """Register ``data`` but leave a torn file on disk (a storage fault after the write)."""
    import hashlib

    import robot_sac.store.sqlite as backend

    real = backend.write_atomic

    def torn(path, payload):  # type: ignore[no-untyped-def]
        real(path, payload[:-1000])
        return hashlib.sha256(payload).hexdigest()

    with monkeypatch.context() as m:
        m.setattr(backend, "write_atomic", torn)
        return store.register_policy(data).version


def test_hot_swap_under_load_never_fails_and_never_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    svc = start_thread_service(tmp_path / "data", policy_poll_s=0.02)
    store = svc.state.store
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(8)]
    failures: list[str] = []

    def robot(i: int) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            while not stop.is_set():
                obs = (rng.standard_normal(17) * 3).tolist()
                r = c.post("/v1/act", json={"obs": obs, "robot_id": f"r{i}"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                action = np.asarray(body["action"])
                if (
                    action.shape != (6,)
                    or not np.all(np.isfinite(action))
                    or np.abs(action).max() > 1
                ):
                    failures.append(f"bad action {body}")
                seen[i].append(body["policy_version"])

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        bad = corrupt_versions()
        published: list[int] = []
        refused: set[int] = set()
        for k in range(20):
            record = store.register_policy(new_version_bytes(k))
            published.append(record.version)
            if k in (5, 10):  # a buggy learner publishes a broken file now and then
                refused.add(store.register_policy(bad["nan" if k == 5 else "wrong_shape"]).version)
            if k == 15:  # and the disk tears one
                refused.add(register_torn(store, new_version_bytes(1000), monkeypatch))
            # The service follows the newest version: one superseded before its watcher looked
            # is skipped, never tried. Let it look at each broken one, so each must be refused.
            deadline = time.monotonic() + 10
            while not refused <= set(svc.state.serving.refused) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)
        # wait until the newest good version is served
        deadline = time.monotonic() + 10
        while svc.state.serving.served.version != published[-1] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    c = svc.client()
    status = c.get("/v1/admin/status").json()
    svc.stop()

    assert failures == []
    assert status["served_version"] == published[-1]
    assert {int(v) for v in status["refused_versions"]} == refused
    for versions in seen:
        assert len(versions) > 10
        assert all(a <= b for a, b in itertools.pairwise(versions)), (
            "a client saw a version go back"
        )
        assert not set(versions) & refused
    # the swaps happened while the robots were acting: they saw several versions
    assert len(set().union(*map(set, seen))) >= 5


def test_uploaded_bad_versions_are_refused_while_serving_goes_on(service: ThreadService):
    c = service.client()
    for name, data in corrupt_versions().items():
        r = c.post(
            "/v1/admin/policies", content=data, headers={"content-type": "application/octet-stream"}
        )
        assert r.status_code == 422, name
        assert isinstance(r.json()["detail"], str) and "refused" in r.json()["detail"], name
        assert c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] == 0
    assert [p["version"] for p in c.get("/v1/admin/policies").json()["policies"]] == [0]


@pytest.mark.parametrize("broken", ["nan", "torn"])
def test_pinning_a_broken_version_is_refused_and_serving_goes_on(
    service: ThreadService, broken: str, monkeypatch: pytest.MonkeyPatch
):
    c = service.client()
    store = service.state.store
    if broken == "torn":
        c.post("/v1/admin/policy/pin", json={"version": 0})  # so the watcher does not see it first
        version = register_torn(store, new_version_bytes(7), monkeypatch)
        c.post("/v1/admin/policy/follow")
    else:
        version = store.register_policy(corrupt_versions()[broken]).version
    r = c.post("/v1/admin/policy/pin", json={"version": version})
    assert r.status_code == 422 and "failed validation" in r.json()["detail"]
    status = c.get("/v1/admin/status").json()
    assert status["mode"] == "follow" and status["served_version"] == 0
    assert str(version) in status["refused_versions"]
    assert c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] == 0


def test_pin_and_follow_act_at_once(service: ThreadService):
    c = service.client()
    store = service.state.store
    for k in range(3):
        store.register_policy(new_version_bytes(k))
    deadline = time.monotonic() + 5
    while c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] != 3:
        assert time.monotonic() < deadline
    assert c.post("/v1/admin/policy/pin", json={"version": 1}).json()["served_version"] == 1
    # the very next act is computed by version 1, and so is every later one
    for _ in range(20):
        assert c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] == 1
    store.register_policy(new_version_bytes(10))  # pinned: a new version is not followed
    time.sleep(0.3)
    assert c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] == 1
    assert c.post("/v1/admin/policy/follow").json()["served_version"] == 4
    assert c.post("/v1/act", json={"obs": [0.0] * 17}).json()["policy_version"] == 4
