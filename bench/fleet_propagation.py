"""How fast a change made on one replica reaches the others, under a fleet's act load.

Three ``robot-sac serve`` replicas (A, B, C) share one PostgreSQL store (a fresh database
``robot_sac_bench_<uuid>``, dropped afterwards), with a robot and an operator token. In the
background 32 simulated robots act at 20 Hz each (640 acts/s offered), robot i on replica i % 3,
each over a keep-alive connection, open loop (a request is due every 50 ms whether or not the
last one was slow). Every answer is recorded: when it arrived, the version it names, its hold.

Then, ``--rounds`` times:

1. publish: ``POST /v1/admin/policies`` to A with a new version file (a fresh ``Actor``); the
   delay is from A's 200 to the first act answer on B naming that version (or a newer one);
2. hold: ``POST /v1/admin/hold`` to A; the delay is from A's 200 to B's first answer with
   ``"hold": true``;
3. release: ``POST /v1/admin/release`` to A, and wait until every replica answers unheld (its
   delay on B is reported too; the goal is not about it).

Delays are also given from the moment A's request was sent, and for A and C themselves. A delay
below 0 means that B had it before A's answer reached the client. The resolution is the gap
between two answers on B (about 5 ms at 11 robots x 20 Hz): reported. Failed requests: every act
or admin request that got no 200 (or no answer). Goals on B, from A's 200: median <= 50 ms, max
<= 200 ms, 0 failed requests.

    .venv/bin/python bench/fleet_propagation.py               # 50 rounds (~2 minutes)
    .venv/bin/python bench/fleet_propagation.py --rounds 5    # a short check

Writes ``bench/results/fleet_propagation.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import http.client
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench.fleet_common import (
    ACTION_DIM,
    OBS_DIM,
    PG_ADMIN,
    CpuMeter,
    Replica,
    fresh_database,
    loadavg,
    machine_facts,
    pg_pids,
    pg_shared_pids,
    quantiles_ms,
    server_facts,
    write_task,
)

ROBOT_TOKEN = "bench-robot-token-0123456789"
OPERATOR_TOKEN = "bench-operator-token-0123456789"
GOAL_MEDIAN_MS, GOAL_MAX_MS = 50.0, 200.0
WAIT_S = 5.0  # the longest a round waits for a change to show everywhere
WALL_OFFSET = time.time() - time.perf_counter()  # perf_counter times to Unix times (for logs)


# --- the robots --------------------------------------------------------------------------------
@dataclass
class Answers:
    """Every act answer of one replica: arrival times (perf_counter), versions, holds."""

    t: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    hold: list[bool] = field(default_factory=list)

    def first(self, after: float, ok: Any) -> float | None:
        """The arrival time of the first answer after ``after`` for which ``ok(version, hold)``."""
        n = len(self.hold)  # appended last: the first n entries of each list are whole
        for i in range(bisect.bisect_right(self.t, after, 0, n), n):
            if ok(self.version[i], self.hold[i]):
                return self.t[i]
        return None


@dataclass
class Fleet:
    """The robots' side: answers per replica, what failed, the latest state each replica gave."""

    answers: list[Answers]
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    messages: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.messages) < 10:
            self.messages.append(what)

    def latest(self, replica: int) -> tuple[int, bool] | None:
        a = self.answers[replica]
        n = len(a.hold)  # appended last (see Answers.first)
        if not n:
            return None
        return a.version[n - 1], a.hold[n - 1]


def act_request(obs: list[float], robot: str) -> bytes:
    body = json.dumps({"obs": obs, "robot_id": robot}).encode()
    return (
        f"POST /v1/act HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ROBOT_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length")
    )
    return status, await reader.readexactly(length)


async def robots(fleet: Fleet, ports: list[int], n: int, rate_hz: float) -> None:
    rng = np.random.default_rng(1)
    start = time.perf_counter() + 0.2

    async def robot(i: int) -> None:
        replica = i % len(ports)
        answers = fleet.answers[replica]
        requests = [
            act_request(rng.standard_normal(OBS_DIM).round(5).tolist(), f"robot-{i}")
            for _ in range(16)
        ]
        reader = writer = None
        k = 0
        phase = i / (n * rate_hz)
        while not fleet.stop.is_set():
            scheduled = start + phase + k / rate_hz
            k += 1
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", ports[replica])
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assert reader is not None
                writer.write(requests[k % len(requests)])
                status, body = await asyncio.wait_for(read_response(reader), 10.0)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                fleet.fail(f"robot {i} on replica {replica}: {type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            t = time.perf_counter()
            if status != 200:
                fleet.fail(f"robot {i} on replica {replica}: HTTP {status} {body[:200]!r}")
                continue
            fleet.latencies.append(t - scheduled)
            answer = json.loads(body)
            # one event loop appends: the lists stay sorted by arrival time
            answers.t.append(t)
            answers.version.append(answer["policy_version"])
            answers.hold.append(answer["hold"])
        if writer is not None:
            writer.close()

    await asyncio.gather(*(robot(i) for i in range(n)))


# --- the operator ------------------------------------------------------------------------------
class Operator:
    """Keep-alive connections to each replica with the operator token."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.conns = [
            http.client.HTTPConnection("127.0.0.1", urlsplit(r.url).port, timeout=30.0)
            for r in replicas
        ]

    def post(
        self, replica: int, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes, float, float]:
        """(status, body, sent at, answered at), times from perf_counter."""
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        if content_type:
            headers["Content-Type"] = content_type
        conn = self.conns[replica]
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, data, t0, time.perf_counter()
            except (ConnectionError, http.client.RemoteDisconnected):
                # uvicorn closes a keep-alive connection idle for 5 s; a new one (these POSTs
                # are safe to repeat only if nothing was sent: RemoteDisconnected on reuse)
                conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for c in self.conns:
            c.close()


def wait_until(cond: Any, timeout: float = WAIT_S) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def version_files(count: int) -> list[bytes]:
    """``count`` distinct version files for the task (fresh actors, seeded)."""
    import torch

    from robot_sac.networks import Actor
    from robot_sac.policy import policy_bytes

    out = []
    for k in range(count):
        torch.manual_seed(1000 + k)
        actor = Actor(OBS_DIM, ACTION_DIM)
        out.append(policy_bytes(actor, [-1.0] * ACTION_DIM, [1.0] * ACTION_DIM, version=0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="publish + hold rounds")
    parser.add_argument("--robots", type=int, default=32, help="background robots")
    parser.add_argument("--rate", type=float, default=20.0, help="acts per second per robot")
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to create ours from")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the logs go")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--log-level", default="warning", help="the replicas' log level (info logs each swap)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the replicas' logs")
    parser.add_argument(
        "--replica-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the replicas (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pauses between steps")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args()
    if any("=" not in kv for kv in args.replica_env):
        parser.error("--replica-env takes NAME=VALUE")
    replica_env = dict(kv.split("=", 1) for kv in args.replica_env)
    if args.rounds < 1 or args.robots < 3 or args.rate <= 0:
        parser.error("need --rounds >= 1, --robots >= 3 (one per replica at least), --rate > 0")

    facts = machine_facts()
    print(f"load average at start: {facts['loadavg_at_start']}", flush=True)
    rng = random.Random(args.seed)
    files = version_files(args.rounds)
    work = Path(tempfile.mkdtemp(prefix="robot_sac_fleet_prop_", dir=args.work_dir))
    task_file = write_task(work / "task.json")
    tokens = (ROBOT_TOKEN, OPERATOR_TOKEN)
    rounds: list[dict[str, Any]] = []
    admin_failures: list[str] = []
    failed_setup = False
    t_start = time.perf_counter()
    with fresh_database(args.admin_url, keep=lambda: args.keep_db or failed_setup) as url:
        database = urlsplit(url).path.lstrip("/")
        pg = server_facts(url)
        print(f"database {database} on PostgreSQL {pg['version']}", flush=True)
        replicas = [
            Replica(
                n,
                task_file,
                work / n,
                work / f"{n}.log",
                store_url=url,
                tokens=tokens,
                log_level=args.log_level,
                extra_env=replica_env,
            )
            for n in ("A", "B", "C")
        ]
        fleet = Fleet([Answers() for _ in replicas])
        loop_thread: threading.Thread | None = None
        admin = psycopg.connect(url, autocommit=True)
        try:
            for r in replicas:
                print(f"replica {r.name} ready in {r.start():.1f} s", flush=True)
            groups = {f"replica_{r.name}": (lambda r=r: [r.pid]) for r in replicas}
            groups["pg_backends"] = pg_pids(admin, database)
            groups["pg_server"] = pg_shared_pids(admin)
            groups["bench"] = lambda: [os.getpid()]
            meter = CpuMeter(groups)
            ports = [urlsplit(r.url).port or 0 for r in replicas]
            loop_thread = threading.Thread(
                target=lambda: asyncio.run(robots(fleet, ports, args.robots, args.rate)),
                daemon=True,
            )
            loop_thread.start()
            if not wait_until(lambda: all(fleet.latest(i) is not None for i in range(3)), 30):
                raise RuntimeError(f"the robots got no answers: {fleet.messages[:3]}")
            time.sleep(1.0)  # steady load first
            op = Operator(replicas)
            meter.start()
            la_before = loadavg()
            t_load0, acts0 = time.perf_counter(), sum(len(a.t) for a in fleet.answers)
            for k in range(args.rounds):
                rec = one_round(k, op, fleet, files[k], rng, admin_failures)
                rounds.append(rec)
                pub, hold = rec["publish"], rec["hold"]
                print(
                    f"round {k + 1:3d}/{args.rounds}: v{pub['version']} on B "
                    f"{fmt(pub['delay_ms']['B'])} ms after A's 200 "
                    f"(A's POST took {pub['post_ms']:.0f} ms); hold on B "
                    f"{fmt(hold['delay_ms']['B'])} ms (A's POST took {hold['post_ms']:.0f} ms); "
                    "release on B "
                    f"{fmt(rec['release']['delay_ms']['B'])} ms",
                    flush=True,
                )
            acts = sum(len(a.t) for a in fleet.answers) - acts0
            load_s = time.perf_counter() - t_load0
            cpu = meter.stop()
            la_after = loadavg()
            op.close()
        except BaseException:
            failed_setup = True
            raise
        finally:
            fleet.stop.set()
            if loop_thread is not None:
                loop_thread.join(timeout=30)
            for r in replicas:
                r.stop()
            admin.close()
    elapsed = time.perf_counter() - t_start

    def series(kind: str, replica: str, key: str = "delay_ms") -> list[float]:
        return [r[kind][key][replica] / 1e3 for r in rounds if r[kind][key][replica] is not None]

    summary: dict[str, Any] = {}
    for kind in ("publish", "hold", "release"):
        summary[kind] = {
            "from_200_ms": {x: quantiles_ms(series(kind, x)) for x in "ABC"},
            "from_send_ms": {x: quantiles_ms(series(kind, x, "from_send_ms")) for x in "ABC"},
            "post_ms": quantiles_ms([r[kind]["post_ms"] / 1e3 for r in rounds]),
            "missed_on_B": sum(r[kind]["delay_ms"]["B"] is None for r in rounds),
        }
    gaps = np.diff(np.asarray(fleet.answers[1].t)) if len(fleet.answers[1].t) > 1 else [0.0]
    resolution_ms = float(np.median(gaps) * 1e3)
    act = quantiles_ms(fleet.latencies)
    failed_requests = fleet.failed + len(admin_failures)
    goals = {}
    for kind in ("publish", "hold"):
        q = summary[kind]["from_200_ms"]["B"]
        goals[kind] = {
            "median_ms": q["median"],
            "max_ms": q["max"],
            "met": (
                q["median"] is not None
                and q["median"] <= GOAL_MEDIAN_MS
                and q["max"] <= GOAL_MAX_MS
                and summary[kind]["missed_on_B"] == 0
                and failed_requests == 0
            ),
        }

    print()
    print(
        f"{facts['cpus']} CPUs; 3 replicas on PostgreSQL {pg['version']}; {args.robots} robots x "
        f"{args.rate:g} Hz ({acts / load_s:.0f} acts/s answered, act latency p50 {act['median']} "
        f"ms p99 {act['p99']} ms max {act['max']} ms); {len(rounds)} rounds"
    )
    for kind, label in (("publish", "new version"), ("hold", "hold"), ("release", "release")):
        s = summary[kind]
        for x in "BC":
            q, f = s["from_200_ms"][x], s["from_send_ms"][x]
            print(
                f"{label:11s} on {x}: from A's 200 median {q['median']} ms, p95 {q['p95']} ms, "
                f"max {q['max']} ms, min {q['min']} ms; from A's request: median {f['median']} ms"
                f", max {f['max']} ms"
            )
        q = s["from_200_ms"]["A"]
        print(
            f"{label:11s} on A itself: from its 200 median {q['median']} ms, max {q['max']} ms; "
            f"A's POST took median {s['post_ms']['median']} ms, max {s['post_ms']['max']} ms; "
            f"rounds where B never showed it: {s['missed_on_B']}"
        )
    print(f"resolution: median gap between answers on B {resolution_ms:.1f} ms")
    print(
        f"failed requests: {failed_requests} ({fleet.failed} acts, {len(admin_failures)} admin)"
        + (f": {(fleet.messages + admin_failures)[:5]}" if failed_requests else "")
    )
    for kind in ("publish", "hold"):
        g = goals[kind]
        print(
            f"goal ({kind}, B, from A's 200): median <= {GOAL_MEDIAN_MS:.0f} ms, max <= "
            f"{GOAL_MAX_MS:.0f} ms, 0 failed -> {'met' if g['met'] else 'NOT met'}"
        )
    cores = {k: round(v / cpu["wall_s"], 2) for k, v in cpu["cpu_s"].items()}
    cores["other"] = round(cpu["other_s"] / cpu["wall_s"], 2)
    print(
        f"cores used during the rounds: {cores} (machine busy {cpu['machine_busy_fraction']:.0%})"
    )
    print(f"load average: before {la_before}, after {la_after}; {elapsed:.0f} s")

    result = {
        "benchmark": "fleet_propagation",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**facts, "loadavg_before_rounds": la_before, "loadavg_after": la_after},
        "postgres": pg,
        "replicas": 3,
        "replica_env": replica_env,
        "robots": args.robots,
        "rate_hz": args.rate,
        "acts_per_s_answered": round(acts / load_s, 1),
        "act_latency_ms_from_schedule": act,
        "rounds": len(rounds),
        "resolution_ms_median_gap_on_B": round(resolution_ms, 2),
        "failed_requests": failed_requests,
        "failed_acts": fleet.failed,
        "failed_admin": len(admin_failures),
        "failure_messages": (fleet.messages + admin_failures)[:20],
        "summary": summary,
        "goals": {"median_ms": GOAL_MEDIAN_MS, "max_ms": GOAL_MAX_MS, "by_kind": goals},
        "cpu": cpu,
        "cores_used": cores,
        "elapsed_s": round(elapsed, 1),
        "per_round": rounds,
    }
    out = args.out or Path(__file__).parent / "results" / "fleet_propagation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if args.keep_logs:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    # Exit status 1 only if a change never reached B (the goals are figures, not pass/fail).
    return 1 if any(summary[k]["missed_on_B"] for k in summary) else 0


def fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:6.1f}"


def one_round(
    k: int,
    op: Operator,
    fleet: Fleet,
    data: bytes,
    rng: random.Random,
    admin_failures: list[str],
) -> dict[str, Any]:
    """Publish on A, then hold on A, then release on A; when each showed on A, B and C."""

    def pause() -> None:
        time.sleep(rng.uniform(0.1, 0.3))  # no fixed phase against the replicas' polls

    def delays(sent: float, answered: float, ok: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        firsts = {x: fleet.answers[i].first(sent, ok) for i, x in enumerate("ABC")}
        return (
            {x: None if t is None else round(1e3 * (t - answered), 3) for x, t in firsts.items()},
            {x: None if t is None else round(1e3 * (t - sent), 3) for x, t in firsts.items()},
        )

    def everywhere(ok: Any) -> bool:
        return all((s := fleet.latest(i)) is not None and ok(*s) for i in range(3))

    rec: dict[str, Any] = {"round": k}
    # 1. a new version on A
    upload = "application/octet-stream"
    status, body, sent, answered = op.post(0, "/v1/admin/policies", data, upload)
    if status != 200:
        admin_failures.append(f"round {k}: publish answered {status} {body[:200]!r}")
        version = -1
    else:
        version = json.loads(body)["version"]

    def has_version(v: int, h: bool) -> bool:
        return v >= version >= 0

    if not wait_until(lambda: everywhere(has_version)):
        admin_failures.append(f"round {k}: version {version} not served everywhere in {WAIT_S} s")
    from_200, from_send = delays(sent, answered, has_version)
    rec["publish"] = {
        "version": version,
        "answered_at_unix": round(answered + WALL_OFFSET, 4),
        "status": status,
        "post_ms": round(1e3 * (answered - sent), 3),
        "delay_ms": from_200,
        "from_send_ms": from_send,
    }
    pause()
    # 2. hold on A
    status, body, sent, answered = op.post(0, "/v1/admin/hold")
    if status != 200:
        admin_failures.append(f"round {k}: hold answered {status} {body[:200]!r}")
    if not wait_until(lambda: everywhere(lambda v, h: h)):
        admin_failures.append(f"round {k}: the hold did not show everywhere in {WAIT_S} s")
    from_200, from_send = delays(sent, answered, lambda v, h: h)
    rec["hold"] = {
        "status": status,
        "post_ms": round(1e3 * (answered - sent), 3),
        "delay_ms": from_200,
        "from_send_ms": from_send,
    }
    pause()
    # 3. release on A
    status, body, sent, answered = op.post(0, "/v1/admin/release")
    if status != 200:
        admin_failures.append(f"round {k}: release answered {status} {body[:200]!r}")
    if not wait_until(lambda: everywhere(lambda v, h: not h)):
        admin_failures.append(f"round {k}: the release did not show everywhere in {WAIT_S} s")
    from_200, from_send = delays(sent, answered, lambda v, h: not h)
    rec["release"] = {
        "status": status,
        "post_ms": round(1e3 * (answered - sent), 3),
        "delay_ms": from_200,
        "from_send_ms": from_send,
    }
    pause()
    return rec


if __name__ == "__main__":
    sys.exit(main())
