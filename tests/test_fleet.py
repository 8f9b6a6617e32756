"""A fleet: inference replicas and a learner that share nothing but a PostgreSQL store.

Real processes (``robot-sac serve``, ``robot-sac learn``) with tokens, real HTTP on loopback, the
machine's PostgreSQL server (a fresh database per fleet, see :mod:`tests.store_backends`). Each
process has a data directory of its own, as it would on a host of its own: the store URL is all
they have in common. The three-replica tests share one fleet (module scope); the kill test,
last, kills one of its replicas.

- The learner on another host: robots act and log through the service, the learner publishes,
  the service serves what it published, and neither data directory holds the other's files.
- Three replicas: every replica converges on each new version within a second of its
  registration; a hold, a release or a pin given to one replica reaches the robots of all;
  ``kill -9`` of one replica while robots log to all three loses no acknowledged transition,
  costs the other two no request, and the dead replica's robots re-send their unacknowledged
  batch to another replica (stored once: accepted or counted a duplicate).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from robot_sac.client import RobotClient
from robot_sac.config import SACConfig
from robot_sac.schemas import TaskSpec
from robot_sac.store import open_store
from tests.servers import (
    OPERATOR_TOKEN,
    ROBOT_TOKEN,
    LearnerProcess,
    ProcessService,
    write_task,
)
from tests.store_backends import pg_database_for

# A small task so the learner publishes within seconds: 3 observations, 1 action in [-2, 2]. The
# safe action is not 0, so a held answer cannot be mistaken for a policy's.
TASK = TaskSpec(
    name="fleet",
    obs_dim=3,
    action_low=(-2.0,),
    action_high=(2.0,),
    safe_action=(0.5,),
    sac=SACConfig(hidden=(32, 32), batch_size=32, learning_starts=200, utd=1.0),
)
SAFE = [0.5]
TOKENS = {"ROBOT_SAC_ROBOT_TOKEN": ROBOT_TOKEN, "ROBOT_SAC_OPERATOR_TOKEN": OPERATOR_TOKEN}
ROBOT = {"Authorization": f"Bearer {ROBOT_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
# The learner publishes every 50 updates (utd 1: every 50 transitions past learning_starts),
# and keeps every version: the convergence test checks each one on every replica.
LEARNER_ENV = {"ROBOT_SAC_PUBLISH_EVERY": "50", "ROBOT_SAC_KEEP_VERSIONS": "100000"}
# The replicas poll the store only once a second (the most the setting allows), so what makes
# them converge sooner is the store's announcements (LISTEN/NOTIFY): without them a hold or a
# version would wait half a poll period on average (tests/test_store_postgres.py checks the
# announcements themselves).
REPLICA_ENV = {"ROBOT_SAC_POLICY_POLL_S": "1.0"}
# How soon every replica must serve a version once it is registered, under load; and how soon
# it must serve one registered on a quieter fleet, or hold, release, pin or follow once one
# replica was told to (a 1 s poll alone would miss this about half the time).
CONVERGE_S = 1.0
PROPAGATE_S = 0.5

Key = tuple[str, str, int]

# A hang (the store gone, a process that never answers) fails the test, and its finally blocks
# still stop every process it started.
pytestmark = pytest.mark.timeout(300)


def eventually(condition: Callable[[], bool], timeout: float, every: float = 0.01) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> None:
    if not eventually(condition, timeout, every):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def host(root: Path, name: str) -> Path:
    """A machine's own disk: a directory with the task file; its data directory is ``data``."""
    d = root / name
    d.mkdir()
    write_task(d / "task.json", TASK)
    (d / "data").mkdir()
    return d


def serve(root: Path, name: str, store_url: str) -> ProcessService:
    d = host(root, name)
    return ProcessService(
        d / "data", d / "task.json", ROBOT_SAC_STORE_URL=store_url, **TOKENS, **REPLICA_ENV
    )


def learn(root: Path, store_url: str) -> LearnerProcess:
    d = host(root, "learner-host")
    return LearnerProcess(d / "data", d / "task.json", ROBOT_SAC_STORE_URL=store_url, **LEARNER_ENV)


def served_version(url: str, http: httpx.Client) -> int:
    r = http.get(f"{url}/v1/policy", headers=ROBOT)
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def registered(store_url: str) -> dict[int, float]:
    """Every registered version and when it was registered (the store's own record)."""
    with psycopg.connect(store_url) as db:
        rows = db.execute("SELECT version, registered_at FROM policies").fetchall()
    return {int(v): float(t) for v, t in rows}


# --- robots -----------------------------------------------------------------------------------
@dataclass
class Answer:
    replica: int
    sent: float  # time.time() of the request
    received: float
    action: list[float]
    version: int
    hold: bool


@dataclass
class Robot:
    """A robot behind a load balancer, in plain HTTP: it acts on its replica, logs a batch every
    ``batch`` steps, and when its replica fails it moves to the next one and re-sends the batch
    that had no 200 yet (the API makes that safe: a stored key is counted a duplicate)."""

    robot_id: str
    urls: list[str]
    at: int  # the replica it talks to now
    seed: int
    batch: int = 20
    pause_s: float = 0.0
    acked: set[Key] = field(default_factory=set)
    acked_at: list[tuple[int, float]] = field(default_factory=list)  # (replica, time) per 200
    failures: list[tuple[int, str]] = field(default_factory=list)  # (replica, what went wrong)
    resent: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    last_acked: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # per replica
    versions: list[int] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        rng = np.random.default_rng(self.seed)
        obs = rng.uniform(-1, 1, 3).tolist()
        pending: list[dict[str, Any]] = []
        step = 0
        with httpx.Client(headers=ROBOT, timeout=5.0) as http:
            while not stop.is_set():
                replica = self.at
                try:
                    r = http.post(
                        f"{self.urls[replica]}/v1/act", json={"obs": obs, "robot_id": self.robot_id}
                    )
                    if r.status_code != 200:
                        raise RuntimeError(f"act: {r.status_code} {r.text}")
                    answer = r.json()
                    self.versions.append(answer["policy_version"])
                    next_obs = np.clip(np.asarray(obs) + 0.1 * rng.standard_normal(3), -1, 1)
                    pending.append(
                        {
                            "robot_id": self.robot_id,
                            "episode_id": f"e{step // 50}",
                            "step": step % 50,
                            "obs": obs,
                            "action": answer["action"],
                            "reward": float(-np.square(next_obs).sum()),
                            "next_obs": next_obs.tolist(),
                            "terminated": False,
                            "truncated": step % 50 == 49,
                            "policy_version": answer["policy_version"],
                        }
                    )
                    obs = next_obs.tolist()
                    step += 1
                    if len(pending) >= self.batch:
                        self._log(http, replica, pending, resend=False)
                        pending = []
                except (httpx.HTTPError, RuntimeError) as exc:
                    self.failures.append((replica, repr(exc)))
                    # The load balancer sends it elsewhere; what had no 200 is sent again there.
                    self.at = (replica + 1) % len(self.urls)
                    if pending:
                        try:
                            self._log(http, self.at, pending, resend=True)
                            pending = []
                        except (httpx.HTTPError, RuntimeError) as again:
                            self.failures.append((self.at, repr(again)))
                            return
                if self.pause_s:
                    time.sleep(self.pause_s)

    def _log(
        self, http: httpx.Client, replica: int, batch: list[dict[str, Any]], resend: bool
    ) -> None:
        r = http.post(f"{self.urls[replica]}/v1/transitions", json={"transitions": batch})
        if r.status_code != 200:
            raise RuntimeError(f"transitions: {r.status_code} {r.text}")
        body = r.json()
        if body["accepted"] + body["duplicates"] != len(batch) or (
            not resend and body["duplicates"]
        ):
            raise RuntimeError(f"transitions: {body} for {len(batch)} new transitions")
        if resend:
            self.resent.append((replica, len(batch), body))
        self.acked.update((t["robot_id"], t["episode_id"], t["step"]) for t in batch)
        self.acked_at.append((replica, time.time()))
        self.last_acked[replica] = batch


class Robots:
    """Robots in threads, stopped (and joined) on exit."""

    def __init__(self, robots: list[Robot]) -> None:
        self.robots, self.stop = robots, threading.Event()
        self.threads = [threading.Thread(target=r.run, args=(self.stop,)) for r in robots]

    def __enter__(self) -> Robots:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class Prober:
    """Acts on one replica every few milliseconds and keeps every answer (for the hold)."""

    def __init__(self, replica: int, url: str) -> None:
        self.replica, self.url = replica, url
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=ROBOT, timeout=5.0) as http:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    r = http.post("/v1/act", json={"obs": [0.1, -0.2, 0.3], "robot_id": "probe"})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    time.sleep(0.05)
                    continue
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code} {r.text}")
                    time.sleep(0.05)
                    continue
                a = r.json()
                self.answers.append(
                    Answer(
                        self.replica,
                        sent,
                        time.time(),
                        a["action"],
                        a["policy_version"],
                        a["hold"],
                    )
                )
                time.sleep(0.003)

    def first_after(self, t: float, hold: bool) -> Answer | None:
        """The first answer to an act sent at ``t`` or later with ``"hold": hold``."""
        return next((a for a in self.answers if a.sent >= t and a.hold is hold), None)


class Probers:
    def __init__(self, urls: list[str]) -> None:
        self.probers = [Prober(i, url) for i, url in enumerate(urls)]

    def __enter__(self) -> list[Prober]:
        for p in self.probers:
            p.thread.start()
        wait_for(lambda: all(p.answers for p in self.probers), 10, "every prober's first answer")
        return self.probers

    def __exit__(self, *exc: object) -> None:
        for p in self.probers:
            p.stop.set()
        for p in self.probers:
            p.thread.join(timeout=30)


# --- 1. the learner on another host ------------------------------------------------------------
def test_learner_on_another_host_shares_only_the_store_url(tmp_path: Path):
    store_url = pg_database_for(tmp_path / "fleet")
    service = serve(tmp_path, "service-host", store_url)
    learner = learn(tmp_path, store_url)
    try:
        learner.start()  # it cannot publish before robots have logged learning_starts steps
        service.start()
        with httpx.Client(timeout=5.0) as http:
            assert served_version(service.url, http) == 0
        rng = np.random.default_rng(1)
        # (closed with a bound: a robot client waits as long as it takes to store its log)
        robot = RobotClient(service.url, "arm-1", token=ROBOT_TOKEN, batch_size=50)
        try:
            obs = rng.uniform(-1, 1, 3).tolist()
            deadline = time.monotonic() + 90
            step, version = 0, 0
            while version == 0:
                assert time.monotonic() < deadline, (
                    "no version published within 90 s\n" + (learner.output()[-3000:])
                )
                action, version, hold = robot.act(obs)
                assert not hold and -2.0 <= action[0] <= 2.0
                next_obs = np.clip(np.asarray(obs) + 0.1 * rng.standard_normal(3), -1, 1)
                robot.log(
                    f"e{step // 50}",
                    step % 50,
                    obs,
                    action,
                    float(-np.square(next_obs).sum()),
                    next_obs.tolist(),
                    terminated=False,
                    truncated=step % 50 == 49,
                    policy_version=version,
                )
                obs, step = next_obs.tolist(), step + 1
            robot.flush(timeout_s=30)
        finally:
            with contextlib.suppress(TimeoutError, RuntimeError):  # keep the first error
                robot.close(timeout_s=10)
        # The service serves what the learner published, read from the store alone.
        described = httpx.get(f"{service.url}/v1/policy", headers=ROBOT, timeout=5.0).json()
        assert described["version"] >= 1 and described["updates"] > 0
        weights = httpx.get(
            f"{service.url}/v1/policy/weights",
            params={"version": described["version"]},
            headers=ROBOT,
            timeout=5.0,
        )
        assert weights.status_code == 200
        assert hashlib.sha256(weights.content).hexdigest() == described["sha256"]
        status = httpx.get(f"{service.url}/v1/admin/status", headers=OPERATOR, timeout=5.0).json()
        assert status["learner"]["state"] == "running" and status["learner"]["updates"] > 0
        assert status["transitions"] >= step - 50
        assert learner.terminate() == 0  # SIGTERM: it publishes, checkpoints and exits 0
    finally:
        learner.kill()
        service.kill()

    def files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*"))

    service_files = files(service.data_dir)
    learner_files = files(learner.data_dir)
    # the service keeps no store, no version files, nothing of the learner's
    assert not [f for f in service_files if f.startswith(("store.sqlite", "policies", "learner"))]
    # the learner keeps its checkpoint (and TensorBoard log) and nothing else
    assert {f.split("/")[0] for f in learner_files} == {"learner"}, learner_files
    assert "learner/checkpoint.pt" in learner_files
    assert not [f for f in learner_files if "store.sqlite" in f or f.startswith("policies")]


# --- 2. three replicas --------------------------------------------------------------------------
@dataclass
class Fleet:
    store_url: str
    replicas: list[ProcessService]
    learner: LearnerProcess
    # the operator's connection (kept alive: a new client costs tens of milliseconds)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.replicas]

    def admin(self, replica: int, path: str, **kw: Any) -> httpx.Response:
        kw["headers"] = {**OPERATOR, **kw.get("headers", {})}
        r = self.http.post(f"{self.urls[replica]}{path}", **kw)
        assert r.status_code == 200, f"{path} on replica {replica}: {r.status_code} {r.text}"
        return r

    def upload(self, replica: int) -> int:
        """Register a copy of the served version file through ``replica``; its new number."""
        data = self.http.get(f"{self.urls[replica]}/v1/policy/weights", headers=ROBOT).content
        r = self.admin(
            replica,
            "/v1/admin/policies",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return int(r.json()["version"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    store_url = pg_database_for(root / "store")
    replicas = [serve(root, f"replica-{name}", store_url) for name in "abc"]
    learner = learn(root, store_url)
    try:
        # The first replica makes version 0; the others start beside each other on that store.
        replicas[0].start()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(), replicas[1:]))
        learner.start()
        fleet = Fleet(store_url, replicas, learner)
        with fleet.http:
            yield fleet
    finally:
        learner.kill()
        for s in replicas:
            s.kill()
    for s in replicas:  # no replica died on its own (only the kill test kills one, by -9)
        assert s.proc is not None and s.proc.returncode in (0, -9, -15), s.log.read_text()[-3000:]


def test_every_replica_converges_on_each_new_version_within_a_second(fleet: Fleet):
    urls = fleet.urls
    fleet.admin(0, "/v1/admin/policy/follow")
    fleet.admin(0, "/v1/admin/release")
    start = max(registered(fleet.store_url))
    # Robots on every replica feed the learner (a few hundred steps a second in all).
    robots = [Robot(f"feeder-{i}", urls, at=i, seed=10 + i, pause_s=0.005) for i in range(3)]
    # What each replica served, every 10 ms: (time, version) at each change.
    changes: list[list[tuple[float, int]]] = [[] for _ in urls]
    stop = threading.Event()

    def poll(i: int) -> None:
        with httpx.Client(base_url=urls[i], headers=ROBOT, timeout=5.0) as http:
            while not stop.is_set():
                v = int(http.get("/v1/policy").json()["version"])
                if not changes[i] or changes[i][-1][1] != v:
                    changes[i].append((time.time(), v))
                time.sleep(0.01)

    pollers = [threading.Thread(target=poll, args=(i,)) for i in range(3)]
    for t in pollers:
        t.start()
    uploads: list[int] = []
    try:
        with Robots(robots):
            # Under load: two versions from the learner, then one uploaded through a replica,
            # then another from the learner.
            wait_for(
                lambda: len([v for v in registered(fleet.store_url) if v > start]) >= 2,
                90,
                "two versions from the learner",
                every=0.1,
            )
            uploads.append(fleet.upload(1))
            wait_for(
                lambda: len([v for v in registered(fleet.store_url) if v > uploads[0]]) >= 1,
                60,
                "a version from the learner after the upload",
                every=0.1,
            )
            # and every robot has acted on it (the learner may publish a few ms after it)
            wait_for(
                lambda: all(r.versions and r.versions[-1] >= uploads[0] for r in robots),
                30,
                "every robot answered by the uploaded version or a newer one",
                every=0.05,
            )
        # Quieter (the robots stopped, the learner runs out of data): versions uploaded through
        # each replica in turn, a few tenths of a second apart, less than the 1 s poll.
        gaps = random.Random(3)
        for k in range(6):
            time.sleep(gaps.uniform(0.3, 0.6))
            uploads.append(fleet.upload(k % 3))
        time.sleep(CONVERGE_S + 0.2)  # let the last ones reach every replica
    finally:
        stop.set()
        for t in pollers:
            t.join(timeout=30)
    stopped = time.time()
    # Every version registered early enough to be due on every replica before the polls ended
    # (the learner may go on publishing meanwhile).
    versions = {
        v: t
        for v, t in registered(fleet.store_url).items()
        if v > start and t < stopped - CONVERGE_S - 0.1
    }
    assert set(uploads) <= set(versions) and len(versions) >= 4 + 6, versions
    latencies: dict[tuple[int, int], float] = {}
    for i in range(3):
        served = [v for _, v in changes[i]]
        assert served == sorted(served), f"replica {i} went back to an older version: {served}"
        for v, at in versions.items():
            # Converged: it serves v, or a newer one (it may skip a version published right
            # after).
            when = next((t for t, served in changes[i] if served >= v), None)
            assert when is not None, f"replica {i} never served version {v}: {changes[i]}"
            latencies[(i, v)] = when - at
    quiet = [t for (_, v), t in latencies.items() if v in uploads[1:]]
    print(
        f"\nconvergence over {len(versions)} versions x 3 replicas: "
        f"median {1000 * float(np.median(list(latencies.values()))):.0f} ms, "
        f"max {1000 * max(latencies.values()):.0f} ms; of the {len(quiet)} after the uploads "
        f"without robots: median {1000 * float(np.median(quiet)):.0f} ms, "
        f"max {1000 * max(quiet):.0f} ms"
    )
    assert max(latencies.values()) < CONVERGE_S, latencies
    # Announced: with the 1 s poll alone the median is 0.7 s (about half take more than 0.5 s);
    # the median, not the maximum, is checked so that a moment of load on a shared CI machine
    # cannot fail it (bench/fleet_propagation.py measures the tail).
    assert float(np.median(quiet)) < PROPAGATE_S / 2, sorted(quiet)
    assert max(quiet) < CONVERGE_S, sorted(quiet)
    for r in robots:
        assert not r.failures, r.failures
        assert r.acked
    # The robots' own answers: the versions only ever went up, past the first upload.
    for r in robots:
        assert r.versions == sorted(r.versions) and r.versions[-1] >= uploads[0]


def test_a_hold_on_one_replica_holds_the_robots_of_every_replica(fleet: Fleet):
    fleet.admin(0, "/v1/admin/release")
    with Probers(fleet.urls) as probers:
        assert not any(a.hold for p in probers for a in p.answers)
        pressed = time.time()
        fleet.admin(0, "/v1/admin/hold")
        answered = time.time()
        wait_for(
            lambda: all(p.first_after(pressed, True) for p in probers),
            5,
            "every replica to hold",
        )
        time.sleep(0.3)  # and they stay held
        released_at = time.time()
        fleet.admin(1, "/v1/admin/release")  # through another replica
        wait_for(
            lambda: all(p.first_after(released_at, False) for p in probers),
            5,
            "every replica to release",
        )
        time.sleep(0.3)
    hold_latency, release_latency = [], []
    for p in probers:
        assert not p.errors, p.errors
        held = p.first_after(pressed, True)
        free = p.first_after(released_at, False)
        assert held is not None and free is not None
        hold_latency.append(held.received - pressed)
        release_latency.append(free.received - released_at)
        # From the first held answer until the release, every act is held, with the safe action.
        during = [a for a in p.answers if held.sent <= a.sent and a.received < released_at]
        assert during and all(a.hold and a.action == SAFE for a in during)
        # After the first free answer, none is held again.
        assert all(not a.hold for a in p.answers if a.sent >= free.sent)
        # The replica that was told answers held from the moment its answer came back.
        if p.replica == 0:
            assert all(a.hold for a in p.answers if answered <= a.sent < released_at)
    for status in (
        fleet.http.get(f"{u}/v1/admin/status", headers=OPERATOR).json() for u in fleet.urls
    ):
        assert status["hold"] is False
    print(
        f"\nhold on replica 0 -> held on replicas 0/1/2 after "
        f"{'/'.join(f'{1000 * x:.0f}' for x in hold_latency)} ms; release on replica 1 -> "
        f"{'/'.join(f'{1000 * x:.0f}' for x in release_latency)} ms"
    )
    assert max(hold_latency) < PROPAGATE_S, hold_latency
    assert max(release_latency) < PROPAGATE_S, release_latency


def until_every_replica(
    fleet: Fleet, serves: Callable[[int], bool], since: float, timeout: float = 10.0
) -> list[float]:
    """How long after ``since`` each replica first served a version for which ``serves``."""
    first: list[float | None] = [None] * len(fleet.urls)
    deadline = time.monotonic() + timeout
    while None in first and time.monotonic() < deadline:
        for i, url in enumerate(fleet.urls):
            if first[i] is None and serves(served_version(url, fleet.http)):
                first[i] = time.time() - since
        time.sleep(0.005)
    assert None not in first, f"not every replica got there within {timeout} s: {first}"
    return first  # type: ignore[return-value]


def test_a_pin_on_one_replica_pins_every_replica_and_follow_releases_them(fleet: Fleet):
    fleet.admin(0, "/v1/admin/policy/follow")
    newer = fleet.upload(0)  # at least two versions, whatever ran before
    until_every_replica(fleet, lambda v: v >= newer, time.time())
    pinned = newer - 1
    try:
        pinned_at = time.time()
        fleet.admin(2, "/v1/admin/policy/pin", json={"version": pinned})
        pin_latency = until_every_replica(fleet, lambda v: v == pinned, pinned_at)
        # a version registered while pinned is served nowhere
        later = fleet.upload(1)
        time.sleep(0.5)
        assert [served_version(u, fleet.http) for u in fleet.urls] == [pinned] * 3
        for u in fleet.urls:
            r = fleet.http.post(f"{u}/v1/act", json={"obs": [0.0, 0.0, 0.0]}, headers=ROBOT)
            assert r.json()["policy_version"] == pinned
            status = fleet.http.get(f"{u}/v1/admin/status", headers=OPERATOR).json()
            assert status["mode"] == "pinned" and status["pinned_version"] == pinned
    finally:
        followed_at = time.time()
        fleet.admin(0, "/v1/admin/policy/follow")  # through another replica
    follow_latency = until_every_replica(fleet, lambda v: v >= later, followed_at)
    print(
        f"\npin on replica 2 -> replicas 0/1/2 served version {pinned} after "
        f"{'/'.join(f'{1000 * x:.0f}' for x in pin_latency)} ms; follow on replica 0 -> "
        f"{'/'.join(f'{1000 * x:.0f}' for x in follow_latency)} ms"
    )
    assert max(pin_latency) < PROPAGATE_S, pin_latency
    assert max(follow_latency) < PROPAGATE_S, follow_latency


def test_kill_9_of_one_replica_loses_no_acknowledged_transition(fleet: Fleet):
    """Robots log to all three; replica 2 dies by SIGKILL; the others do not miss a request."""
    assert all(s.proc is not None and s.proc.poll() is None for s in fleet.replicas)
    urls, dead = fleet.urls, 2
    rng = random.Random(15)
    # two robots on each survivor, three on the replica that dies
    homes = [0, 0, 1, 1, 2, 2, 2]
    robots = [Robot(f"crash-{k}", urls, at=home, seed=100 + k) for k, home in enumerate(homes)]
    with Robots(robots):
        wait_for(lambda: all(r.acked for r in robots), 30, "every robot's first acknowledged batch")
        time.sleep(rng.uniform(0.2, 0.6))
        killed_at = time.time()
        fleet.replicas[dead].kill()  # SIGKILL: no shutdown handler runs

        def logged_since_kill(r: Robot) -> int:
            return sum(1 for replica, t in r.acked_at if t > killed_at and replica != dead)

        # The survivors, and the dead replica's robots on them, go on: every robot has two
        # more batches acknowledged by a survivor.
        went_on = eventually(lambda: all(logged_since_kill(r) >= 2 for r in robots), 30)
        time.sleep(0.5)
    # Not one failed request on the survivors; on the dead replica, one per robot that was on it.
    for r in robots:
        assert [f for f in r.failures if f[0] != dead] == [], (r.robot_id, r.failures)
    assert went_on, "a robot stopped logging: batches acknowledged since the kill " + str(
        {r.robot_id: logged_since_kill(r) for r in robots}
    )
    movers = [r for r in robots if r.failures]
    assert movers == [r for r, home in zip(robots, homes, strict=True) if home == dead]
    for r in movers:
        assert len(r.failures) == 1 and r.at != dead
    # Their unacknowledged batches went to a survivor and were taken: accepted or duplicates.
    resent = [x for r in movers for x in r.resent]
    assert resent, "no robot on the dead replica had a batch in flight"
    for replica, n, body in resent:
        assert replica != dead and body["accepted"] + body["duplicates"] == n
    # The store, read afresh: every acknowledged key exactly once, nothing else of these robots.
    acked = set().union(*(r.acked for r in robots))
    with psycopg.connect(fleet.store_url) as db:
        rows = db.execute(
            "SELECT robot_id, episode_id, step FROM transitions WHERE robot_id LIKE 'crash-%'"
        ).fetchall()
        total, distinct, counted = db.execute(
            "SELECT (SELECT COUNT(*) FROM transitions), "
            "(SELECT COUNT(DISTINCT (robot_id, episode_id, step)) FROM transitions), "
            "(SELECT SUM(n) FROM transition_counts)"
        ).fetchone()
    stored = [(r, e, int(s)) for r, e, s in rows]
    assert len(stored) == len(set(stored)), "a transition is stored twice"
    assert set(stored) == acked, (
        f"lost {len(acked - set(stored))} acknowledged, {len(set(stored) - acked)} unexpected"
    )
    assert total == distinct == counted
    # A batch the dead replica had acknowledged (as if its answer had been lost on the way),
    # sent again to a survivor: every transition a duplicate, none stored twice.
    for r in movers:
        again = fleet.http.post(
            f"{urls[0]}/v1/transitions", json={"transitions": r.last_acked[dead]}, headers=ROBOT
        )
        assert again.status_code == 200
        assert again.json() == {"accepted": 0, "duplicates": len(r.last_acked[dead])}
    store = open_store(TASK, url=fleet.store_url)
    try:
        assert store.transition_count() == total
    finally:
        store.close()
    print(
        f"\nkill -9 of replica {dead}: {len(acked)} acknowledged transitions all stored once; "
        f"{len(resent)} in-flight batches re-sent: "
        + ", ".join(f"{b['accepted']} accepted/{b['duplicates']} duplicates" for _, _, b in resent)
    )
