"""What the fleet benchmarks share: a fresh PostgreSQL database per run, replicas of
``robot-sac serve`` on it, and where the CPU goes (per process, from /proc).

Not a benchmark itself; ``bench/fleet_ingest.py``, ``bench/fleet_propagation.py`` and
``bench/crash_durability.py --postgres`` import it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from robot_sac import processes

OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah's sizes
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_PREFIX = "robot_sac_bench_"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the database ------------------------------------------------------------------------------
def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` with its database replaced by ``name``."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


@contextmanager
def fresh_database(admin_url: str = PG_ADMIN, keep: Callable[[], bool] = lambda: False):  # type: ignore[no-untyped-def]
    """A new, empty database ``robot_sac_bench_<uuid>`` on the server of ``admin_url``; its URL.

    Dropped afterwards (every connection to it closed by force) unless ``keep()`` says so then.
    """
    name = DB_PREFIX + uuid.uuid4().hex[:16]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = database_url(admin_url, name)
    try:
        yield url
    finally:
        if keep():
            print(f"database {name} kept", flush=True)
        else:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def server_facts(url: str) -> dict[str, Any]:
    """The PostgreSQL server's version and the settings that decide durable-write speed."""
    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {"version": conn.execute("SHOW server_version").fetchone()[0]}  # type: ignore[index]
        for name in (
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "commit_delay",
            "shared_buffers",
            "max_connections",
            "data_directory",
        ):
            facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index, arg-type]
    return facts


def wal_counters(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """``pg_stat_wal``: WAL written and flushed (server-wide: other databases count too)."""
    row = conn.execute(
        "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
    ).fetchone()
    assert row is not None
    return {
        "wal_records": float(row[0]),
        "wal_bytes": float(row[1]),
        "wal_write": float(row[2]),
        "wal_sync": float(row[3]),
    }


# --- the machine -------------------------------------------------------------------------------
def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": loadavg(),
    }


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_start_s(pid: int) -> float | None:
    """When ``pid`` started, in seconds since boot."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[19]) / CLK_TCK


def uptime_s() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU seconds spent by groups of processes over an interval, and by the whole machine.

    ``groups`` maps a name to a function giving the group's pids now; it is asked at the start
    and at the end, and a pid seen only at the end counts from 0 if it started during the
    interval (a connection opened meanwhile). Everything the machine did that no group explains
    is ``other`` (other users of the machine, the kernel's own threads).
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine0 = (0.0, 0.0)
        self._t0 = self._up0 = 0.0

    def start(self) -> None:
        self._start = {}
        for name, pids in self.groups.items():
            self._start[name] = {p: c for p in pids() if (c := proc_cpu_s(p)) is not None}
        self._machine0 = machine_cpu_s()
        self._t0, self._up0 = time.perf_counter(), uptime_s()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        busy1, total1 = machine_cpu_s()
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self._start.get(name, {})
            spent = 0.0
            for p in set(pids()) | set(before):
                now = proc_cpu_s(p)
                if now is None:
                    continue  # gone: what it spent in the interval is lost (rare)
                if p in before:
                    spent += now - before[p]
                elif (started := proc_start_s(p)) is not None and started >= self._up0 - 0.05:
                    spent += now
            out[name] = round(spent, 3)
        busy = busy1 - self._machine0[0]
        capacity = total1 - self._machine0[1]
        accounted = sum(out.values())
        return {
            "wall_s": round(wall, 3),
            "cpu_s": out,
            "machine_busy_s": round(busy, 3),
            "machine_capacity_s": round(capacity, 3),
            "other_s": round(max(0.0, busy - accounted), 3),
            "machine_busy_fraction": round(busy / capacity, 3) if capacity else None,
        }


def pg_pids(conn: psycopg.Connection[Any], database: str) -> Callable[[], list[int]]:
    """The pids of the client backends connected to ``database`` (not ``conn``'s own)."""

    def pids() -> list[int]:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'",
            (database,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    return pids


def pg_shared_pids(conn: psycopg.Connection[Any]) -> Callable[[], list[int]]:
    """The server's own processes (WAL writer, checkpointer, background writer, autovacuum):
    they serve every database, so other users of the server count in them too."""

    def pids() -> list[int]:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
        ).fetchall()
        pids = [int(r[0]) for r in rows]
        # the postmaster (forks every connection) is not in pg_stat_activity
        with suppress(OSError, IndexError, ValueError):
            pids.append(int(Path(f"/proc/{pids[0]}/stat").read_text().split(") ")[1].split()[1]))
        return pids

    return pids


# --- replicas ------------------------------------------------------------------------------------
def write_task(path: Path) -> Path:
    task = {
        "name": "cheetah",
        "obs_dim": OBS_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
    }
    path.write_text(json.dumps(task))
    return path


@dataclass
class Replica:
    """``robot-sac serve`` in a subprocess on a free loopback port.

    ``store_url`` None: SQLite in ``data_dir``. ``tokens``: (robot, operator) or None.
    """

    name: str
    task_file: Path
    data_dir: Path
    log: Path
    store_url: str | None = None
    tokens: tuple[str, str] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    log_level: str = "warning"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Starts it and waits for /readyz 200; returns the seconds that took."""
        self.port = processes.free_port()
        drop = ("ROBOT_SAC_ROBOT_TOKEN", "ROBOT_SAC_OPERATOR_TOKEN", "ROBOT_SAC_STORE_URL")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if self.tokens is not None:
            env["ROBOT_SAC_ROBOT_TOKEN"], env["ROBOT_SAC_OPERATOR_TOKEN"] = self.tokens
        env.update(self.extra_env)
        args = ["serve", "--task", str(self.task_file), "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port), "--log-level", self.log_level, "--device", "cpu"]
        if self.store_url is not None:
            args += ["--store-url", self.store_url]
        t0 = time.perf_counter()
        self.proc = processes.spawn(args, self.log, env=env)
        try:
            processes.wait_ready(
                self.url, self.proc, self.log, timeout, name=f"replica {self.name}"
            )
        except processes.NotReady:
            self.kill()
            raise
        return time.perf_counter() - t0

    def pause(self) -> None:
        """SIGSTOP: it takes no CPU (its idle watcher included) while others are measured."""
        if self.proc is not None and not self.stopped:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.proc is not None and self.stopped:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.stopped = False

    def kill(self) -> None:
        processes.kill(self.proc)

    def stop(self) -> int | None:
        """SIGTERM (resumed first: a stopped process would not see it), SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
        return processes.stop(self.proc, 30)


@contextmanager
def replicas_running(replicas: list[Replica]) -> Iterator[list[Replica]]:
    """Start each (one after another: the first creates the store's schema), stop all after."""
    try:
        for r in replicas:
            r.start()
        yield replicas
    finally:
        for r in replicas:
            r.stop()


def quantiles_ms(samples: list[float]) -> dict[str, float | int | None]:
    """Median, p95, p99 and max of ``samples`` (seconds) in milliseconds."""
    if not samples:
        return {"n": 0, "median": None, "p95": None, "p99": None, "max": None}
    ms = sorted(1e3 * x for x in samples)

    def at(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 3)

    return {
        "n": len(ms),
        "median": round(statistics.median(ms), 3),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(ms[-1], 3),
        "min": round(ms[0], 3),
    }
