"""Durable ingest into PostgreSQL: one replica, three replicas, and raw psycopg, in one run.

N robots (default 8, then 32) each post HalfCheetah-sized transitions (17 observations, 6
actions) in batches of 100, one batch after another (the next once the last got its 200: a 200
means committed), as MessagePack bodies with float32 ``bin`` vectors, the body ``RobotClient``
sends. Side by side, on one fresh database (``robot_sac_bench_<uuid>``, dropped afterwards):

* ``one``: every robot posts to one ``robot-sac serve`` replica (``--store-url`` the database);
* ``three``: three replicas on the same store, robot i posting to replica i % 3;
* ``raw``: N threads of this process, each with its own psycopg connection
  (``synchronous_commit = on``), write the same rows into a table with the store's columns and
  keys (``position`` primary key, ``UNIQUE (robot_id, episode_id, step)``), one statement per
  batch in autocommit: one transaction, one durable commit, one round trip per batch. Which
  statement is fastest is measured first, at each N, and the fastest is the baseline: a multi-row
  ``INSERT ... VALUES ... ON CONFLICT DO NOTHING`` (prepared), ``COPY ... FROM STDIN (FORMAT
  BINARY)`` or the store's own ``INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT`` (the
  statements' parameters in binary, psycopg's fastest). The rows
  are made as the robots' bodies are, in the same threads (no HTTP, no service);
* ``raw_upsert``: when ``COPY`` is the fastest, the fastest of the two statements that can skip
  a key already stored (``ON CONFLICT DO NOTHING``, which the service needs: a retried batch is a
  success) is timed too, for reference;
* ``sqlite``: one replica on its own SQLite store (for context; ``--no-sqlite`` leaves it out).

Only the processes of the configuration under test run: the replicas of the others are stopped
(SIGSTOP) meanwhile, so their idle watchers take no CPU. The configurations take turns in
alternating order (ABBA) over ``--rounds`` rounds, each ``--seconds`` long after an untimed
warm-up, so that a noisy machine slows them alike; the ratios to read are the medians of the
per-round ratios. During every timed slot the CPU seconds of each replica, of the database's
server processes (this database's backends, and the server's shared ones: WAL writer,
checkpointer...), of this process (the robots' side) and of the whole machine are read from
/proc, with pg_stat_wal's WAL flushes: where the CPU goes, and how many commits share a flush.

Goals: one replica >= 40 % of raw; three replicas >= 2x one (on a 2-core machine that runs the
robots and PostgreSQL too, the CPU figures say why not).

    .venv/bin/python bench/fleet_ingest.py                  # 8 and 32 robots, 2 x 10 s (~5 min)
    .venv/bin/python bench/fleet_ingest.py --quick          # a short check that it works
    .venv/bin/python bench/fleet_ingest.py --robots 8 32 --rounds 2 --seconds 10

Writes ``bench/results/fleet_ingest.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata
import inspect
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
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
    wal_counters,
    write_task,
)
from robot_sac.store.postgres import SCHEMA as STORE_SCHEMA

EPISODE_STEPS = 1000  # HalfCheetah: 1000-step episodes, truncated
BATCH = 100
GOAL_ONE_VS_RAW = 0.40
GOAL_THREE_VS_ONE = 2.0

# The store's own transitions table (columns, types, unique key), under another name.
RAW_TABLE = next(
    statement for statement in STORE_SCHEMA.split(";") if " transitions (" in statement
).replace("IF NOT EXISTS transitions", "raw_transitions")
COLUMNS = (
    "position, robot_id, episode_id, step, obs, action, reward, next_obs, terminated, "
    "truncated, policy_version, received_at"
)
# Parameters go in binary (%b): psycopg then skips quoting each value as text, which for these
# rows costs about three times the client CPU (measured: unnest 1.8 ms vs 0.6 ms per batch).
ROW = "(" + ",".join(["%b"] * 12) + ")"
VALUES = (
    f"INSERT INTO raw_transitions ({COLUMNS}) VALUES {','.join([ROW] * BATCH)} "
    "ON CONFLICT (robot_id, episode_id, step) DO NOTHING"
)
COPY = f"COPY raw_transitions ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = [
    "int8", "text", "text", "int8", "bytea", "bytea", "float8", "bytea", "int2", "int2", "int8",
    "float8",
]  # fmt: skip
UNNEST = f"""
INSERT INTO raw_transitions ({COLUMNS})
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bytea[],
    %b::bytea[], %b::float8[], %b::bytea[], %b::smallint[], %b::smallint[], %b::bigint[],
    %b::float8[]) AS r ORDER BY 2, 3, 4
ON CONFLICT (robot_id, episode_id, step) DO NOTHING
"""
RAW_METHODS = ("values", "copy", "unnest")


# --- the data ------------------------------------------------------------------------------------
class Pool:
    """Random vectors for ``k`` steps, reused under fresh keys (the store does not read them)."""

    def __init__(self, rng: np.random.Generator, k: int = 512) -> None:
        obs = rng.standard_normal((k + 1, OBS_DIM)).astype("<f4")
        self.obs = [obs[i].tobytes() for i in range(k + 1)]
        self.action = [a.tobytes() for a in rng.uniform(-1, 1, (k, ACTION_DIM)).astype("<f4")]
        self.reward = [float(x) for x in rng.standard_normal(k).astype("<f4")]
        self.k = k

    def body(self, robot: str, batch: int) -> bytes:
        """Batch number ``batch`` of ``robot``, as the MessagePack body RobotClient sends."""
        out = []
        for s in range(batch * BATCH, (batch + 1) * BATCH):
            j = s % self.k
            out.append(
                {
                    "robot_id": robot,
                    "episode_id": f"e{s // EPISODE_STEPS}",
                    "step": s,
                    "obs": self.obs[j],
                    "action": self.action[j],
                    "reward": self.reward[j],
                    "next_obs": self.obs[j + 1],
                    "terminated": False,
                    "truncated": s % EPISODE_STEPS == EPISODE_STEPS - 1,
                    "policy_version": 0,
                }
            )
        return msgspec.msgpack.encode({"transitions": out})

    def rows(self, robot: str, batch: int, position: int) -> list[tuple[Any, ...]]:
        """The same batch as the store's rows (positions from ``position``)."""
        now = time.time()
        out = []
        for i, s in enumerate(range(batch * BATCH, (batch + 1) * BATCH)):
            j = s % self.k
            truncated = int(s % EPISODE_STEPS == EPISODE_STEPS - 1)
            out.append(
                (
                    position + i,
                    robot,
                    f"e{s // EPISODE_STEPS}",
                    s,
                    self.obs[j],
                    self.action[j],
                    self.reward[j],
                    self.obs[j + 1],
                    0,
                    truncated,
                    0,
                    now,
                )
            )
        return out


# --- the robots ----------------------------------------------------------------------------------
@dataclass
class RobotStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.messages) < 5:
            self.messages.append(what)


class Slot:
    """Robot threads that post until told to stop; counters readable while they run."""

    def __init__(self, robots: list[Callable[[RobotStats, threading.Event], None]]) -> None:
        self.stop = threading.Event()
        self.stats = [RobotStats() for _ in robots]
        self.threads = [
            threading.Thread(target=self._run, args=(fn, st), daemon=True)
            for fn, st in zip(robots, self.stats, strict=True)
        ]
        self.failures: list[str] = []

    def _run(self, fn: Callable[[RobotStats, threading.Event], None], st: RobotStats) -> None:
        try:
            fn(st, self.stop)
        except BaseException as exc:  # a robot that died is a failure to report
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def accepted(self) -> int:
        return sum(s.accepted for s in self.stats)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        if any(t.is_alive() for t in self.threads):
            self.failures.append("a robot thread did not stop within 120 s")


Robot = Callable[[RobotStats, threading.Event], None]


def service_robot(url: str, robot: str, pool: Pool) -> Robot:
    """A robot posting MessagePack batches over one keep-alive ``http.client`` connection; a
    batch refused with 503 or cut off is sent again (as RobotClient does), counted as an error."""
    parts = urlsplit(url)

    def run(st: RobotStats, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60.0)
        batch = 0
        body = pool.body(robot, batch)
        headers = {"content-type": "application/msgpack"}
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v1/transitions", body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    st.error(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    time.sleep(0.05)
                    continue
                if response.status != 200:
                    st.error(f"HTTP {response.status}: {data[:200]!r}")
                    if response.status in (429, 503):
                        time.sleep(float(response.getheader("retry-after") or 0.05))
                        continue
                    batch += 1  # refused for good: the next one
                    body = pool.body(robot, batch)
                    continue
                st.latencies.append(time.perf_counter() - t0)
                answer = json.loads(data)
                st.accepted += answer["accepted"]
                st.duplicates += answer["duplicates"]
                st.batches += 1
                if answer != {"accepted": BATCH, "duplicates": 0}:
                    st.error(f"a new batch answered {answer}")
                batch += 1
                body = pool.body(robot, batch)
        finally:
            conn.close()

    return run


POSITIONS = itertools.count(1)  # raw rows' positions: next() is atomic under the GIL


def raw_robot(
    url: str, robot: str, pool: Pool, method: str
) -> Callable[[RobotStats, threading.Event], None]:
    """A robot writing its batches straight into PostgreSQL: one statement (one transaction, one
    durable commit) per batch on a connection of its own."""

    def write(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        if method == "values":
            conn.execute(VALUES, [x for row in rows for x in row])
        elif method == "copy":
            with conn.cursor() as cur, cur.copy(COPY) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        else:
            conn.execute(UNNEST, [list(c) for c in zip(*rows, strict=True)])

    def run(st: RobotStats, stop: threading.Event) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            batch = 0
            while not stop.is_set():
                rows = pool.rows(robot, batch, next(POSITIONS) * 1024)
                t0 = time.perf_counter()
                write(conn, rows)
                st.latencies.append(time.perf_counter() - t0)
                st.accepted += BATCH
                st.batches += 1
                batch += 1

    return run


# --- one timed slot ------------------------------------------------------------------------------
@dataclass
class Measured:
    rate: float
    accepted: int
    latencies: list[float]
    errors: int
    messages: list[str]
    cpu: dict[str, Any]
    wal: dict[str, float]
    loadavg_before: list[float]
    loadavg_after: list[float]


def measure(
    robots: list[Callable[[RobotStats, threading.Event], None]],
    warmup_s: float,
    seconds: float,
    meter: CpuMeter,
    admin: psycopg.Connection[Any],
) -> tuple[Measured, int]:
    """Run the robots; time ``seconds`` after ``warmup_s``; (figures, every row accepted)."""
    la0 = loadavg()
    slot = Slot(robots)
    slot.start()
    time.sleep(warmup_s)
    lat_from = [len(s.latencies) for s in slot.stats]
    wal0 = wal_counters(admin)
    meter.start()
    n0, t0 = slot.accepted(), time.perf_counter()
    time.sleep(seconds)
    n1, t1 = slot.accepted(), time.perf_counter()
    cpu = meter.stop()
    wal1 = wal_counters(admin)
    lat_to = [len(s.latencies) for s in slot.stats]
    slot.finish()
    if slot.failures:
        raise RuntimeError(f"robots failed: {slot.failures[:3]}")
    latencies = [
        x for s, a, b in zip(slot.stats, lat_from, lat_to, strict=True) for x in s.latencies[a:b]
    ]
    wal = {k: wal1[k] - wal0[k] for k in wal0}
    batches = (n1 - n0) / BATCH
    wal["commits_per_wal_sync"] = round(batches / wal["wal_sync"], 2) if wal["wal_sync"] else None  # type: ignore[assignment]
    return (
        Measured(
            rate=(n1 - n0) / (t1 - t0),
            accepted=n1 - n0,
            latencies=latencies,
            errors=sum(s.errors for s in slot.stats),
            messages=[m for s in slot.stats for m in s.messages][:10],
            cpu=cpu,
            wal=wal,
            loadavg_before=la0,
            loadavg_after=loadavg(),
        ),
        slot.accepted(),
    )


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def product_limits() -> dict[str, Any]:
    """The service's own concurrency limits on the write path (they shape the figures)."""
    from robot_sac.services.inference.app import WRITER_THREADS
    from robot_sac.store.postgres import PostgresStore

    pool = inspect.signature(PostgresStore.__init__).parameters["pool_size"].default
    return {"writer_threads_per_replica": WRITER_THREADS, "pg_pool_size_per_replica": pool}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, nargs="+", default=[8, 32], help="fleet sizes")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per fleet size")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per slot")
    parser.add_argument("--warmup", type=float, default=1.5, help="untimed seconds per slot")
    parser.add_argument(
        "--calibrate", type=float, default=3.0, help="seconds per raw method when choosing one"
    )
    parser.add_argument(
        "--raw-method", choices=RAW_METHODS, default=None, help="skip the choice; use this one"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="leave the SQLite replica out")
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to create ours from")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the data files go")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="4 robots, 1 round of 2 s: a check")
    args = parser.parse_args()
    if args.quick:
        args.robots, args.rounds, args.seconds, args.warmup, args.calibrate = [4], 1, 2.0, 0.5, 1.0
    if args.rounds < 1 or args.seconds <= 0 or min(args.robots) < 1:
        parser.error("--rounds, --seconds and --robots must be positive")

    facts = machine_facts()
    print(f"load average at start: {facts['loadavg_at_start']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="robot_sac_fleet_ingest_", dir=args.work_dir))
    task_file = write_task(work / "task.json")
    rng = np.random.default_rng(args.seed)
    pool = Pool(rng)
    t_start = time.perf_counter()
    failed = False
    with fresh_database(args.admin_url, keep=lambda: args.keep_db or failed) as url:
        database = urlsplit(url).path.lstrip("/")
        pg = server_facts(url)
        print(f"database {database} on PostgreSQL {pg['version']}", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RAW_TABLE)  # type: ignore[arg-type]
        admin = psycopg.connect(url, autocommit=True)
        pg_replicas = [
            Replica(f"pg{i}", task_file, work / f"pg{i}", work / f"pg{i}.log", store_url=url)
            for i in range(3)
        ]
        sqlite = Replica("sqlite", task_file, work / "sqlite", work / "sqlite.log")
        replicas = pg_replicas + ([] if args.no_sqlite else [sqlite])
        expected = {"pg": 0, "raw": 0, "sqlite": 0}
        results: dict[str, Any] = {}
        try:
            for r in replicas:
                took = r.start()
                print(f"replica {r.name} ready in {took:.1f} s on {r.url}", flush=True)
            groups = {f"replica_{r.name}": (lambda r=r: [r.pid]) for r in replicas}
            groups["pg_backends"] = pg_pids(admin, database)
            groups["pg_server"] = pg_shared_pids(admin)
            groups["bench_robots"] = lambda: [os.getpid()]
            meter = CpuMeter(groups)

            def only(running: list[Replica]) -> None:
                for r in replicas:
                    if r in running:
                        r.resume()
                    else:
                        r.pause()

            for n in args.robots:
                results[str(n)] = run_fleet(
                    n, args, pool, url, pg_replicas, sqlite, only, meter, admin, expected
                )
            only(replicas)
            # Every row stored once, or the figures mean nothing.
            with psycopg.connect(url, autocommit=True) as conn:
                pg_rows = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]  # type: ignore[index]
                raw_rows = conn.execute("SELECT COUNT(*) FROM raw_transitions").fetchone()[0]  # type: ignore[index]
            sqlite_rows = None
            if not args.no_sqlite:
                import httpx

                sqlite_rows = httpx.get(f"{sqlite.url}/v1/admin/status", timeout=30).json()[
                    "transitions"
                ]
            counts = {
                "pg": [pg_rows, expected["pg"]],
                "raw": [raw_rows, expected["raw"]],
                "sqlite": [sqlite_rows, expected["sqlite"]],
            }
            if (
                pg_rows != expected["pg"]
                or raw_rows != expected["raw"]
                or (sqlite_rows is not None and sqlite_rows != expected["sqlite"])
            ):
                failed = True
                print(f"ROW COUNTS ARE OFF (stored, expected): {counts}", flush=True)
        finally:
            for r in replicas:
                r.stop()
            admin.close()
    elapsed = time.perf_counter() - t_start
    la_end = loadavg()

    print()
    print(
        f"{facts['cpus']} CPUs, python {facts['python']}, PostgreSQL {pg['version']} "
        f"(synchronous_commit {pg['synchronous_commit']}, {pg['wal_sync_method']}); batches of "
        f"{BATCH}, MessagePack bodies; {args.rounds} x {args.seconds:g} s per configuration"
    )
    goals: dict[str, Any] = {}
    for n, res in results.items():
        summarise(n, res)
        goals[n] = {
            "one_vs_raw": res["ratios"]["one_vs_raw"],
            "one_vs_raw_met": res["ratios"]["one_vs_raw"] >= GOAL_ONE_VS_RAW,
            "three_vs_one": res["ratios"]["three_vs_one"],
            "three_vs_one_met": res["ratios"]["three_vs_one"] >= GOAL_THREE_VS_ONE,
        }
    print(f"load average: start {facts['loadavg_at_start']}, end {la_end}; {elapsed:.0f} s")

    result = {
        "benchmark": "fleet_ingest",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**facts, "loadavg_at_end": la_end},
        "postgres": pg,
        "psycopg": version_of("psycopg"),
        "product_limits": product_limits(),
        "quick": args.quick,
        "robots": args.robots,
        "rounds": args.rounds,
        "seconds_per_slot": args.seconds,
        "warmup_s": args.warmup,
        "batch_size": BATCH,
        "shapes": {"obs": OBS_DIM, "action": ACTION_DIM, "episode_steps": EPISODE_STEPS},
        "body": "application/msgpack, float32 bin vectors (as RobotClient sends)",
        "row_counts_stored_expected": counts,
        "ok": not failed,
        "goals": {
            "one_vs_raw": GOAL_ONE_VS_RAW,
            "three_vs_one": GOAL_THREE_VS_ONE,
            "by_fleet_size": goals,
        },
        "elapsed_s": round(elapsed, 1),
        "results": results,
    }
    out = args.out or Path(__file__).parent / "results" / "fleet_ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")
    return 1 if failed else 0


def run_fleet(
    n: int,
    args: argparse.Namespace,
    pool: Pool,
    url: str,
    pg_replicas: list[Replica],
    sqlite: Replica,
    only: Callable[[list[Replica]], None],
    meter: CpuMeter,
    admin: psycopg.Connection[Any],
    expected: dict[str, int],
) -> dict[str, Any]:
    """Every configuration for a fleet of ``n`` robots, in alternating rounds."""
    tags = itertools.count()

    def raw_robots(method: str) -> list[Callable[[RobotStats, threading.Event], None]]:
        tag = next(tags)
        return [raw_robot(url, f"raw{n}-{tag}-{i}", pool, method) for i in range(n)]

    # Which raw statement is fastest here, at this fleet size.
    calibration: dict[str, float] = {}
    method = args.raw_method
    only([])
    if method is None:
        for m in RAW_METHODS:
            got, total = measure(raw_robots(m), args.warmup / 2, args.calibrate, meter, admin)
            expected["raw"] += total
            calibration[m] = round(got.rate)
        method = max(calibration, key=lambda m: calibration[m])
        print(
            f"n={n}: raw statements, transitions/s: "
            + ", ".join(f"{m} {v:.0f}" for m, v in calibration.items())
            + f" -> raw uses {method}",
            flush=True,
        )
    # COPY cannot skip a key already stored, which the service must (a retried batch is a
    # success): the fastest statement that can is timed beside it, as raw_upsert.
    upsert = None
    if method == "copy":
        upsert = max(("values", "unnest"), key=lambda m: calibration.get(m, 0.0))
        if not calibration:
            upsert = "unnest"

    def service_robots(
        targets: list[Replica], kind: str
    ) -> Callable[[], list[Callable[[RobotStats, threading.Event], None]]]:
        def make() -> list[Callable[[RobotStats, threading.Event], None]]:
            tag = next(tags)
            return [
                service_robot(targets[i % len(targets)].url, f"{kind}{n}-{tag}-{i}", pool)
                for i in range(n)
            ]

        return make

    configs: dict[str, tuple[list[Replica], Callable[[], Any], str]] = {
        "raw": ([], lambda: raw_robots(method), "raw"),
        **({"raw_upsert": ([], lambda: raw_robots(upsert), "raw")} if upsert is not None else {}),
        "one": (pg_replicas[:1], service_robots(pg_replicas[:1], "one"), "pg"),
        "three": (pg_replicas, service_robots(pg_replicas, "three"), "pg"),
    }
    if not args.no_sqlite:
        configs["sqlite"] = ([sqlite], service_robots([sqlite], "sqlite"), "sqlite")
    slots: dict[str, list[Measured]] = {k: [] for k in configs}
    for r in range(args.rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            running, make, store = configs[name]
            only(running)
            got, total = measure(make(), args.warmup, args.seconds, meter, admin)
            expected[store] += total
            slots[name].append(got)
        line = "  ".join(f"{k} {v[-1].rate:7.0f}" for k, v in slots.items())
        print(
            f"n={n} round {r + 1}/{args.rounds}: transitions/s  {line}  "
            f"(one/raw {slots['one'][-1].rate / slots['raw'][-1].rate:.0%}, "
            f"three/one {slots['three'][-1].rate / slots['one'][-1].rate:.2f}x)  "
            f"load {loadavg()}",
            flush=True,
        )
    only([])

    def per_round(a: str, b: str) -> float:
        return statistics.median(x.rate / y.rate for x, y in zip(slots[a], slots[b], strict=True))

    ratios = {"one_vs_raw": per_round("one", "raw"), "three_vs_one": per_round("three", "one")}
    ratios["three_vs_raw"] = per_round("three", "raw")
    if "raw_upsert" in slots:
        ratios["one_vs_raw_upsert"] = per_round("one", "raw_upsert")
        ratios["raw_upsert_vs_raw"] = per_round("raw_upsert", "raw")
    if "sqlite" in slots:
        ratios["sqlite_vs_one"] = per_round("sqlite", "one")
    out: dict[str, Any] = {
        "raw_method": method,
        "raw_upsert_method": upsert,
        "raw_calibration_transitions_per_s": calibration,
        "ratios": ratios,
        "configs": {},
    }
    for name, ms in slots.items():
        wall = sum(m.cpu["wall_s"] for m in ms)
        accepted = sum(m.accepted for m in ms)
        cpu: dict[str, float] = {}
        for m in ms:
            for k, v in m.cpu["cpu_s"].items():
                cpu[k] = cpu.get(k, 0.0) + v
            cpu["other"] = cpu.get("other", 0.0) + m.cpu["other_s"]
        busy = sum(m.cpu["machine_busy_s"] for m in ms)
        capacity = sum(m.cpu["machine_capacity_s"] for m in ms)
        wal_sync = sum(m.wal["wal_sync"] for m in ms)
        out["configs"][name] = {
            "transitions_per_s": [round(m.rate, 1) for m in ms],
            "median_transitions_per_s": round(statistics.median(m.rate for m in ms), 1),
            "batch_latency_ms": quantiles_ms([x for m in ms for x in m.latencies]),
            "errors": sum(m.errors for m in ms),
            "error_messages": [x for m in ms for x in m.messages][:10],
            "cores_used": {k: round(v / wall, 3) for k, v in cpu.items() if v > 0},
            "cpu_ms_per_1000_transitions": {
                k: round(1e3 * v / accepted * 1000, 2) for k, v in cpu.items() if v > 0
            },
            "machine_busy_fraction": round(busy / capacity, 3) if capacity else None,
            "wal_syncs_per_s": round(wal_sync / wall, 1),
            "batches_per_wal_sync": round(accepted / BATCH / wal_sync, 2) if wal_sync else None,
            "loadavg": [[m.loadavg_before, m.loadavg_after] for m in ms],
            "per_slot": [{"rate": round(m.rate, 1), "cpu": m.cpu, "wal": m.wal} for m in ms],
        }
    return out


def summarise(n: str, res: dict[str, Any]) -> None:
    print(f"\n{n} robots (raw: {res['raw_method']}, raw_upsert: {res['raw_upsert_method']}):")
    configs = res["configs"]
    raw = configs["raw"]["median_transitions_per_s"]
    for name, c in configs.items():
        lat = c["batch_latency_ms"]
        print(
            f"  {name:7s} {c['median_transitions_per_s']:9.0f} transitions/s "
            f"({c['median_transitions_per_s'] / raw:6.1%} of raw)  batch p50 {lat['median']} ms "
            f"p99 {lat['p99']} ms  errors {c['errors']}  WAL flushes/s {c['wal_syncs_per_s']} "
            f"(batches per flush {c['batches_per_wal_sync']}); machine busy "
            f"{c['machine_busy_fraction']:.0%}"
        )
        cores = "  ".join(f"{k} {v:.2f}" for k, v in sorted(c["cores_used"].items()))
        per = "  ".join(f"{k} {v:.0f}" for k, v in sorted(c["cpu_ms_per_1000_transitions"].items()))
        print(f"          cores: {cores}")
        print(f"          CPU ms per 1000 transitions: {per}")
    r = res["ratios"]
    print(
        f"  one/raw {r['one_vs_raw']:.1%} (goal >= {GOAL_ONE_VS_RAW:.0%}: "
        f"{'met' if r['one_vs_raw'] >= GOAL_ONE_VS_RAW else 'NOT met'}); three/one "
        f"{r['three_vs_one']:.2f}x (goal >= {GOAL_THREE_VS_ONE:.0f}x: "
        f"{'met' if r['three_vs_one'] >= GOAL_THREE_VS_ONE else 'NOT met'})"
        + (f"; sqlite/one {r['sqlite_vs_one']:.2f}x" if "sqlite_vs_one" in r else "")
    )
    if "one_vs_raw_upsert" in r:
        print(
            f"  against raw {res['raw_upsert_method']} with ON CONFLICT DO NOTHING (idempotent, "
            f"as the service must be): one {r['one_vs_raw_upsert']:.1%}"
        )


if __name__ == "__main__":
    sys.exit(main())
