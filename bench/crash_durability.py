"""Durability under kill -9: no acknowledged transition is lost, none is stored twice.

The test suite's check (tests/test_service_crash.py, 10 rounds) run for longer and measured. Each
round, on one data directory that persists across rounds:

1. start ``robot-sac serve`` in a subprocess;
2. 2 to 4 client threads (each its own robot_id) post batches of 20 transitions with unique keys,
   one after another, and record which got a 200 (acknowledged: on disk, per the API);
3. kill -9 the service at a random moment (seeded; uniform 0.2 to 1.0 s after the clients start);
   the batch each client had in flight has an unknown outcome;
4. restart the service (timed: start to /readyz 200) and re-send the in-flight batches, as a robot
   would; each retry must get a 200 with accepted + duplicates == batch size (duplicates == 20: it
   had been committed before the kill; a mix of both would be a torn batch);
5. stop the service (SIGTERM) and check the SQLite file with ``sqlite3`` directly: PRAGMA
   integrity_check is 'ok', no key is stored twice, every acknowledged key is there, no row was
   never acknowledged, and the service's /v1/admin/status "transitions" equals the table's rows.

With ``--postgres`` the store is PostgreSQL instead (``--store-url``): a fresh database
``robot_sac_bench_<uuid>`` on the server (default ``postgresql://postgres@127.0.0.1:5432``),
dropped afterwards unless something failed. The service gets the URL; the checks of step 5 read
the database with psycopg: amcheck's ``bt_index_check(..., heapallindexed => true)`` on the
transitions table's indexes stands for the integrity check, the same key rules apply, and no
backend of the database may outlive the round (a killed service's connections end with it, and
with them any transaction it had open). As with SQLite, a batch committed whose 200 never reached
the client is allowed (the retry then answers it all as duplicates).

    PYTHONPATH=. .venv/bin/python bench/crash_durability.py                 # 50 rounds
    PYTHONPATH=. .venv/bin/python bench/crash_durability.py --rounds 3      # a short check
    .venv/bin/python bench/crash_durability.py --postgres --rounds 20       # on PostgreSQL

Exit status 1 if anything was lost, duplicated or corrupt (the data directory is then kept).
Writes ``bench/results/crash_durability.json`` (``crash_durability_postgres.json`` with
PostgreSQL).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from robot_sac import processes

OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah's sizes
Key = tuple[str, str, int]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- the service (started, waited for and stopped by robot_sac.processes) --------------------
class Service:
    """``robot-sac serve`` in a subprocess on a free loopback port, without tokens."""

    def __init__(
        self, data_dir: Path, task_file: Path, log: Path, store_url: str | None = None
    ) -> None:
        self.data_dir, self.task_file, self.log = data_dir, task_file, log
        self.store_url = store_url
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Starts it and waits for /readyz 200; returns the seconds that took."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ROBOT_SAC_ROBOT_TOKEN", "ROBOT_SAC_OPERATOR_TOKEN", "ROBOT_SAC_STORE_URL")
        }
        args = ["serve", "--task", str(self.task_file), "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port), "--log-level", "warning"]
        if self.store_url is not None:
            args += ["--store-url", self.store_url]
        t0 = time.perf_counter()
        self.proc = processes.spawn(args, self.log, env=env)
        try:
            processes.wait_ready(self.url, self.proc, self.log, timeout, interval=0.02)
        except processes.NotReady:
            self.kill()
            raise
        return time.perf_counter() - t0

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        processes.kill(self.proc)

    def terminate(self) -> int:
        """SIGTERM, SIGKILL after 30 s; the exit code."""
        code = processes.stop(self.proc, 30)
        assert code is not None, "never started"
        return code


def transition(robot: str, episode: str, step: int) -> dict[str, Any]:
    return {
        "robot_id": robot,
        "episode_id": episode,
        "step": step,
        "obs": [0.01 * step] * OBS_DIM,
        "action": [0.0] * ACTION_DIM,
        "reward": 1.0,
        "next_obs": [0.01 * (step + 1)] * OBS_DIM,
        "terminated": False,
        "truncated": False,
        "policy_version": 0,
    }


def keys(batch: list[dict[str, Any]]) -> list[Key]:
    return [(t["robot_id"], t["episode_id"], t["step"]) for t in batch]


# --- one robot -------------------------------------------------------------------------------
@dataclass
class Sender:
    """Posts batches until the service dies; remembers what got a 200 and what was in flight."""

    url: str
    robot: str
    batch_size: int
    acked: list[Key] = field(default_factory=list)
    in_flight: list[dict[str, Any]] | None = None
    cut_off_by: str = ""
    anomalies: list[str] = field(default_factory=list)

    def run(self) -> None:
        step = 0
        with httpx.Client(base_url=self.url, timeout=10.0) as c:
            while True:
                batch = [transition(self.robot, "e0", step + k) for k in range(self.batch_size)]
                try:
                    r = c.post("/v1/transitions", json={"transitions": batch})
                except httpx.HTTPError as exc:
                    self.in_flight, self.cut_off_by = batch, type(exc).__name__
                    return  # outcome unknown: the robot will retry it
                if r.status_code != 200:
                    self.in_flight, self.cut_off_by = batch, f"HTTP {r.status_code}"
                    return
                body = r.json()
                if body != {"accepted": self.batch_size, "duplicates": 0}:
                    self.anomalies.append(f"{self.robot} step {step}: a new batch answered {body}")
                self.acked.extend(keys(batch))
                step += self.batch_size


# --- the checks ------------------------------------------------------------------------------
@dataclass
class Check:
    integrity: str
    rows: int
    duplicated: int
    lost: int
    unexpected: int

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and not (self.duplicated or self.lost or self.unexpected)


def check_store(db_path: Path, acked: set[Key]) -> Check:
    db = sqlite3.connect(db_path)
    try:
        result = db.execute("PRAGMA integrity_check").fetchall()
        integrity = "ok" if result == [("ok",)] else "; ".join(str(r[0]) for r in result[:5])
        stored = db.execute("SELECT robot_id, episode_id, step FROM transitions").fetchall()
    finally:
        db.close()
    return compare(integrity, stored, acked)


def check_postgres(url: str, acked: set[Key], amcheck: bool) -> Check:
    """The same checks on the PostgreSQL store; ``amcheck``: verify the transitions table's
    B-tree indexes against the table (the closest thing to SQLite's integrity_check)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        integrity = "ok" if amcheck else "not checked (no amcheck)"
        if amcheck:
            indexes = db.execute(
                "SELECT indexrelid::regclass::text FROM pg_index "
                "WHERE indrelid = 'transitions'::regclass"
            ).fetchall()
            problems = []
            for (index,) in indexes:
                try:
                    db.execute("SELECT bt_index_check(%s::regclass, true)", (index,))
                except psycopg.Error as exc:
                    problems.append(f"{index}: {str(exc).strip()}")
            integrity = "ok" if not problems else "; ".join(problems[:5])
        stored = [
            (r, e, int(s))
            for r, e, s in db.execute("SELECT robot_id, episode_id, step FROM transitions")
        ]
    return compare(integrity, stored, acked)


def compare(integrity: str, stored: list[Any], acked: set[Key]) -> Check:
    unique = set(stored)
    return Check(
        integrity=integrity,
        rows=len(stored),
        duplicated=len(stored) - len(unique),
        lost=len(acked - unique),
        unexpected=len(unique - acked),  # everything sent is acknowledged once retried
    )


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Campaign:
    """The rounds' shared state: one data directory, everything acknowledged, what went wrong."""

    data: Path
    task_file: Path
    log: Path
    batch_size: int
    store_url: str | None = None  # PostgreSQL; None: SQLite in ``data``
    amcheck: bool = False
    acked: set[Key] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    running: Service | None = None

    def start(self) -> tuple[Service, float]:
        svc = Service(self.data, self.task_file, self.log, self.store_url)
        self.running = svc
        return svc, svc.start()

    def round(self, r: int, n_clients: int, kill_after: float) -> dict[str, Any] | None:
        """One start, send, kill -9, restart, retry, stop, check; None if it could not go on."""
        svc, start_s = self.start()
        senders = [Sender(svc.url, f"r{r}-{i}", self.batch_size) for i in range(n_clients)]
        threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
        for t in threads:
            t.start()
        time.sleep(kill_after)
        svc.kill()
        for t in threads:
            t.join(timeout=60)
        if any(t.is_alive() for t in threads):
            self.failures.append(f"round {r}: a client did not stop after the kill")
        for s in senders:
            self.acked.update(s.acked)
            self.failures.extend(f"round {r}: {a}" for a in s.anomalies)
        in_flight = [s.in_flight for s in senders if s.in_flight is not None]

        # Restart on the same data; the robots retry what was in flight.
        try:
            svc, restart_s = self.start()
        except (RuntimeError, TimeoutError) as exc:
            self.failures.append(f"round {r}: the service did not come back after kill -9: {exc}")
            return None
        committed = fresh = 0
        with httpx.Client(base_url=svc.url, timeout=30.0) as c:
            for batch in in_flight:
                resp = c.post("/v1/transitions", json={"transitions": batch})
                body = resp.json() if resp.status_code == 200 else {}
                accepted, dups = body.get("accepted", -1), body.get("duplicates", -1)
                if resp.status_code != 200 or accepted + dups != len(batch):
                    self.failures.append(
                        f"round {r}: a retry answered {resp.status_code} {resp.text[:200]}"
                    )
                    continue
                if dups == len(batch):
                    committed += 1  # it had been committed before the kill; its 200 was lost
                elif accepted == len(batch):
                    fresh += 1
                else:
                    self.failures.append(f"round {r}: torn batch: {accepted} new, {dups} stored")
                self.acked.update(keys(batch))
            status = c.get("/v1/admin/status")
            status.raise_for_status()
            count = status.json()["transitions"]
        rc = svc.terminate()
        self.running = None

        lingering = 0
        if self.store_url is None:
            check = check_store(self.data / "store.sqlite", self.acked)
        else:
            lingering = wait_for_no_backends(self.store_url)
            if lingering:
                self.failures.append(
                    f"round {r}: {lingering} connections to the database outlived the service"
                )
            check = check_postgres(self.store_url, self.acked, self.amcheck)
        if not check.ok:
            self.failures.append(f"round {r}: {check}")
        if count != check.rows:
            self.failures.append(
                f"round {r}: /v1/admin/status says {count} transitions, the table {check.rows}"
            )
        return {
            "round": r,
            "clients": n_clients,
            "kill_after_s": round(kill_after, 3),
            "cut_off_by": sorted({s.cut_off_by for s in senders if s.cut_off_by}),
            "in_flight": len(in_flight),
            "in_flight_committed": committed,
            "in_flight_not_committed": fresh,
            "acked_total": len(self.acked),
            "rows": check.rows,
            "status_transitions": count,
            "integrity": check.integrity,
            "lost": check.lost,
            "duplicated": check.duplicated,
            "unexpected": check.unexpected,
            "start_s": round(start_s, 3),
            "restart_s": round(restart_s, 3),
            "terminate_rc": rc,
            **({"lingering_backends": lingering} if self.store_url is not None else {}),
        }


def wait_for_no_backends(url: str, timeout: float = 10.0) -> int:
    """Wait until no other connection to the database at ``url`` remains; how many still do."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as db:
        while True:
            (n,) = db.execute(  # type: ignore[misc]
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
            if n == 0 or time.monotonic() > deadline:
                return int(n)
            time.sleep(0.05)


def fresh_database(admin_url: str) -> str:
    """A new database ``robot_sac_bench_<uuid>`` on the server of ``admin_url``; its URL."""
    import psycopg

    name = "robot_sac_bench_" + uuid.uuid4().hex[:16]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def prepare_postgres(url: str, created: bool) -> tuple[bool, str]:
    """(amcheck usable, the server's version); refuses a store that already holds transitions
    (every row must be one this run acknowledged). amcheck is installed only in a database
    this run created."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        version = str(db.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        exists = db.execute("SELECT to_regclass('transitions') IS NOT NULL").fetchone()[0]  # type: ignore[index]
        if exists and db.execute("SELECT EXISTS (SELECT 1 FROM transitions)").fetchone()[0]:  # type: ignore[index]
            raise SystemExit(f"{urlsplit(url).path} already holds transitions: use an empty store")
        if created:
            try:
                db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            except psycopg.Error as exc:
                print(f"note: no amcheck ({str(exc).strip()}); indexes are not verified")
        amcheck = bool(
            db.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck')"
            ).fetchone()[0]  # type: ignore[index]
        )
    return amcheck, version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="kill -9 rounds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and clients")
    parser.add_argument("--min-clients", type=int, default=2, help="fewest client threads")
    parser.add_argument("--max-clients", type=int, default=4, help="most client threads")
    parser.add_argument("--batch-size", type=int, default=20, help="transitions per batch")
    parser.add_argument(
        "--kill-after",
        type=float,
        nargs=2,
        default=(0.2, 1.0),
        metavar=("LO", "HI"),
        help="the kill comes uniformly between LO and HI seconds after the clients start",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where the data dir goes")
    parser.add_argument("--keep", action="store_true", help="keep the data dir even if all is ok")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--postgres",
        nargs="?",
        const=PG_ADMIN,
        default=None,
        metavar="ADMIN_URL",
        help="run on PostgreSQL, in a fresh database created through ADMIN_URL (default "
        f"{PG_ADMIN}) and dropped afterwards",
    )
    where.add_argument(
        "--store-url", default=None, help="run on this (empty) PostgreSQL store; kept afterwards"
    )
    args = parser.parse_args()
    if args.rounds < 1 or not 1 <= args.min_clients <= args.max_clients or args.batch_size < 1:
        parser.error("need --rounds >= 1, 1 <= --min-clients <= --max-clients, --batch-size >= 1")
    if not 0 <= args.kill_after[0] <= args.kill_after[1]:
        parser.error("--kill-after needs 0 <= LO <= HI")

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="robot_sac_crash_", dir=args.work_dir))
    task_file = work / "task.json"
    task = {
        "name": "cheetah",
        "obs_dim": OBS_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
    }
    task_file.write_text(json.dumps(task))
    store_url: str | None = args.store_url
    if args.postgres is not None:
        store_url = fresh_database(args.postgres)
    amcheck, pg_version = False, None
    if store_url is not None:
        amcheck, pg_version = prepare_postgres(store_url, created=args.postgres is not None)
        print(f"store: PostgreSQL {pg_version}, database {urlsplit(store_url).path.lstrip('/')}")
    print(f"data in {work}; seed {args.seed}", flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]

    camp = Campaign(
        work / "data", task_file, work / "service.log", args.batch_size, store_url, amcheck
    )
    records: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        for r in range(args.rounds):
            n_clients = rng.randint(args.min_clients, args.max_clients)
            kill_after = rng.uniform(*args.kill_after)
            try:
                rec = camp.round(r, n_clients, kill_after)
            except Exception as exc:  # a broken round is a failure to report, not a traceback
                camp.failures.append(f"round {r}: {exc!r}")
                break
            if rec is None:
                break
            records.append(rec)
            print(
                f"round {r + 1:3d}/{args.rounds}: {n_clients} clients, kill at {kill_after:.2f} s, "
                f"acked {rec['acked_total']:7d}, rows {rec['rows']:7d}, "
                f"in flight {rec['in_flight']} ({rec['in_flight_committed']} committed), "
                f"lost={rec['lost']} dup={rec['duplicated']}, integrity {rec['integrity']}, "
                f"restart {rec['restart_s']:.2f} s",
                flush=True,
            )
    finally:
        if camp.running is not None:
            camp.running.kill()
    elapsed = time.perf_counter() - t_start
    load_after = [round(x, 2) for x in os.getloadavg()]

    done = len(records)
    lost = records[-1]["lost"] if records else 0
    duplicated = records[-1]["duplicated"] if records else 0
    integrity_failures = sum(rec["integrity"] != "ok" for rec in records)
    count_mismatches = sum(rec["status_transitions"] != rec["rows"] for rec in records)
    unexpected = records[-1]["unexpected"] if records else 0
    nothing_in_flight = sum(rec["in_flight"] == 0 for rec in records)
    restarts = [rec["restart_s"] for rec in records]
    median_restart = statistics.median(restarts) if restarts else None
    failures = camp.failures
    ok = not failures and done == args.rounds
    print()
    print(f"rounds                {done}/{args.rounds} ({elapsed:.0f} s)")
    print(f"acknowledged          {len(camp.acked)} transitions")
    print(
        f"in flight at the kill {sum(rec['in_flight'] for rec in records)} batches, "
        f"{sum(rec['in_flight_committed'] for rec in records)} of them already committed"
    )
    print(f"lost                  {lost}")
    print(f"duplicated            {duplicated}")
    print(f"integrity failures    {integrity_failures}")
    print(f"count mismatches      {count_mismatches} (/v1/admin/status vs rows)")
    print(f"rows never acked      {unexpected}")
    if nothing_in_flight:
        print(f"note: in {nothing_in_flight} rounds no batch was in flight at the kill")
    if median_restart is not None:
        print(f"restart to ready      median {median_restart:.2f} s, max {max(restarts):.2f} s")
    for f in failures[:20]:
        print(f"FAIL {f}")
    if store_url is not None:
        lingering = sum(rec.get("lingering_backends", 0) for rec in records)
        print(f"lingering connections {lingering} (after the service stopped)")
    print(f"load average          before {load_before}, after {load_after}")
    print("durability: " + ("OK" if ok else f"FAILED; data kept in {work}"))

    result = {
        "benchmark": "crash_durability",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "python": platform.python_version(),
        **(
            {"store": "sqlite", "sqlite": sqlite3.sqlite_version}
            if store_url is None
            else {"store": "postgresql", "postgres": pg_version, "amcheck": amcheck}
        ),
        "torch": version_of("torch"),
        "seed": args.seed,
        "rounds_requested": args.rounds,
        "rounds": done,
        "batch_size": args.batch_size,
        "clients": [args.min_clients, args.max_clients],
        "kill_after_s": list(args.kill_after),
        "acknowledged": len(camp.acked),
        "lost": lost,
        "duplicated": duplicated,
        "integrity_failures": integrity_failures,
        "count_mismatches": count_mismatches,
        "unexpected_rows": unexpected,
        **(
            {"lingering_backends": sum(rec.get("lingering_backends", 0) for rec in records)}
            if store_url is not None
            else {}
        ),
        "rounds_nothing_in_flight": nothing_in_flight,
        "median_restart_s": median_restart,
        "max_restart_s": max(restarts) if restarts else None,
        "elapsed_s": round(elapsed, 1),
        "ok": ok,
        "failures": failures,
        "per_round": records,
    }
    name = "crash_durability.json" if store_url is None else "crash_durability_postgres.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.postgres is not None and store_url is not None:
        if ok and not args.keep:
            drop_database(args.postgres, store_url)
        else:
            print(f"database kept: {urlsplit(store_url).path.lstrip('/')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
