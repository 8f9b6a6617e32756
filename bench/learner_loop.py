"""The running learner's updates/s while the log grows, against the bare update rate.

HalfCheetah's sizes (17 observations, 6 actions), networks (256, 256), batch 256, ``utd=0`` (the
learner updates as fast as the machine allows), ``learning_starts=1000`` and a log pre-filled with
5,000 transitions, so every learner starts at once. Three conditions, each timed in windows that
lie between two windows of the bare loop, their order reversed every round:

- ``bare`` (between the others): the core update loop of ``bench/learner_throughput.py``,
  ``SAC.update(replay.sample(256))``, in this process with the learner's torch thread count;
- ``bare+producer``: the same while the log producer runs (a diagnostic: what the producer alone
  takes from the updates);
- ``learner``: ``robot-sac learn`` in its own process with the default settings (publish every
  1,000 updates, checkpoint every 10,000) while a producer thread here appends 500 transitions/s
  to its store (50 every 100 ms). Its rate is the difference of the ``updates`` counter of its
  status row over the difference of the row's heartbeats, over a window after a warm-up;
- ``learner_frequent``: a second learner that publishes every 200 updates (the cost of
  publishing).

Each window's ratio is to the mean of the two bare windows around it, so a machine whose speed
drifts slows both sides alike; a learner not being measured is stopped (SIGSTOP) and takes
nothing. On a shared machine other processes take cores now and then, and a torch loop with as
many threads as cores slows down many times over when one core is taken: every window records
the cores used by processes not of this benchmark (from /proc/stat), windows start once those
leave the cores (waiting up to ``--wait-quiet`` seconds in all), and the figure to read is the
median ratio of the quiet ``learner`` windows (in the window and the two bare windows around it,
other processes used at most the cores that ``--threads`` leaves free, plus 0.12); goal >= 0.90.
With no quiet window the verdict is inconclusive.

Then publish-to-served: ``robot-sac serve`` on the frequent learner's data directory, robots
acting at 50 Hz each and logging 500 transitions/s through ``POST /v1/transitions``, while the
learner runs; for each version it publishes, the time from its registration (``registered_at``)
to the first ``/v1/act`` answer naming it or a newer one. Goal: under 1 s.

The run also times one publish, checkpoint, status write and log pull of a ``Learner`` in this
process, reports what they should cost at the measured rate, and the CPU a paused learner uses.

    python bench/learner_loop.py                  # about 4 minutes on 2 cores
    python bench/learner_loop.py --quick          # about 1 minute
    python bench/learner_loop.py --threads 1      # leave a core to the producer and others
    python bench/learner_loop.py --device cuda    # learner and bare loop on the GPU

Writes ``bench/results/learner_loop.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac import processes
from robot_sac.admin_schemas import LearnerStatus
from robot_sac.schemas import TaskSpec
from robot_sac.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
OBS_DIM, ACTION_DIM, BATCH = 17, 6, 256
PREFILL, EPISODE_STEPS = 5_000, 1_000
LOG_RATE, LOG_BATCH = 500, 50  # transitions/s, in batches of this many
STATUS_POLL_S = 0.1
QUIET_CPU = 0.12  # cores other processes may use, beyond the cores our threads leave free
CLK_TCK = os.sysconf("SC_CLK_TCK")


def task_spec() -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": "cheetah",
            "obs_dim": OBS_DIM,
            "action_low": [-1.0] * ACTION_DIM,
            "action_high": [1.0] * ACTION_DIM,
            "sac": {"utd": 0, "learning_starts": 1000, "batch_size": BATCH},
        }
    )


# --- the log producer ---------------------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Step:
    """A transition as a robot logs it (the fields of ``robot_sac.schemas.Transition``)."""

    robot_id: str
    episode_id: str
    step: int
    obs: list[float]
    action: list[float]
    reward: float
    next_obs: list[float]
    terminated: bool
    truncated: bool
    policy_version: int | None
    source: str = "policy"


class Producer:
    """Logs ``rate`` transitions/s in batches from a thread, on a fixed schedule; times its CPU.

    ``start(sink)`` runs until ``stop()``; the sink takes a list of :class:`Step` (a store's
    ``append``, or an HTTP post). Keys ``(robot_id, episode_id, step)`` never repeat, and every
    ``EPISODE_STEPS`` steps an episode ends (truncated), as a robot's would.
    """

    def __init__(self, robot_id: str, rate: int = LOG_RATE, batch: int = LOG_BATCH) -> None:
        self.robot_id, self.rate, self.batch = robot_id, rate, batch
        rng = np.random.default_rng(abs(hash(robot_id)) % 2**32)
        self._obs = rng.standard_normal((1024, OBS_DIM)).astype(np.float32).round(5).tolist()
        self._act = rng.uniform(-1, 1, (1024, ACTION_DIM)).astype(np.float32).round(5).tolist()
        self._count = 0
        self.policy_version: int | None = None  # what the robots were last told
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats: dict[str, Any] = {}

    def make(self, n: int) -> list[Step]:
        out = []
        for _ in range(n):
            k = self._count
            self._count += 1
            episode, step = divmod(k, EPISODE_STEPS)
            out.append(
                Step(
                    self.robot_id,
                    f"e{episode}",
                    step,
                    self._obs[k % 1024],
                    self._act[k % 1024],
                    float(self._obs[(k + 7) % 1024][0]),
                    self._obs[(k + 1) % 1024],
                    False,
                    step == EPISODE_STEPS - 1,
                    self.policy_version,
                )
            )
        return out

    def start(self, sink: Callable[[list[Step]], object]) -> None:
        assert self._thread is None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(sink,), daemon=True)
        self._thread.start()

    def _run(self, sink: Callable[[list[Step]], object]) -> None:
        period = self.batch / self.rate
        cpu0, t0 = time.thread_time(), time.monotonic()
        sent = late = errors = 0
        error = None
        k = 0
        while True:
            delay = t0 + k * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            if delay < -period:
                late += 1
            try:
                sink(self.make(self.batch))
                sent += self.batch
            except Exception as exc:  # report, keep the schedule
                errors += 1
                error = repr(exc)
            k += 1
        wall = time.monotonic() - t0
        cpu = time.thread_time() - cpu0
        self._stats = {
            "transitions": sent,
            "seconds": wall,
            "per_s": sent / wall if wall > 0 else 0.0,
            "cpu_s": cpu,
            "cpu_share": cpu / wall if wall > 0 else 0.0,  # of one core
            "late_batches": late,
            "errors": errors,
            "last_error": error,
        }

    def stop(self) -> dict[str, Any]:
        assert self._thread is not None
        self._stop.set()
        self._thread.join()
        self._thread = None
        return dict(self._stats)


def prefill(store: Store, n: int = PREFILL) -> None:
    producer = Producer("prefill")
    for _ in range(0, n, 1000):
        store.append(producer.make(1000))


# --- processes ----------------------------------------------------------------------------------
def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (NaN if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    except (OSError, ValueError):
        return float("nan")
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK  # user nice system irq softirq steal


class CpuMeter:
    """Cores used over an interval: by our processes ``pids``, and by everything else."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        ours = sum(proc_cpu_seconds(p) for p in self.pids)
        return time.monotonic(), machine_busy_seconds(), ours

    def stop(self) -> dict[str, float]:
        (t0, b0, o0), (t1, b1, o1) = self._start, self._read()
        wall = max(t1 - t0, 1e-9)
        foreign = (b1 - b0 - o1 + o0) / wall  # NaN where /proc cannot be read
        return {"ours_cpu": (o1 - o0) / wall, "foreign_cpu": 0.0 if foreign < 0 else foreign}


class Child:
    """A subprocess whose output goes to a log file; stoppable, resumable, always cleaned up."""

    def __init__(self, name: str, cmd: list[str], logs: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log_path.write_bytes(b"")
        # Run from the scratch folder: a checkout's root would put its source folder first on
        # the path, shadowing an installed (not editable) robot_sac.
        self.proc = processes.spawn_command(cmd, self.log_path, env, cwd=logs.parent)
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pause(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.stopped = False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.resume()  # a stopped process would not see SIGTERM
        return processes.stop(self.proc, 30)


class LearnerProc(Child):
    """``robot-sac learn`` on its own data directory, and a store handle to watch it."""

    def __init__(
        self,
        name: str,
        spec: TaskSpec,
        task: Path,
        data_dir: Path,
        logs: Path,
        *,
        device: str,
        threads: int,
        publish_every: int,
        checkpoint_every: int,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "robot_sac.cli",
            "learn",
            "--task",
            str(task),
            "--data-dir",
            str(data_dir),
            "--no-progress",
            "--device",
            device,
            "--threads",
            str(threads),
            "--publish-every",
            str(publish_every),
            "--log-level",
            "warning",
        ]
        env = {
            **os.environ,
            "ROBOT_SAC_CHECKPOINT_EVERY": str(checkpoint_every),
            "ROBOT_SAC_LEARNER_THREADS": str(threads),
            # the versions published are counted from the registry: retention must keep them
            "ROBOT_SAC_KEEP_VERSIONS": str(10**9),
        }
        self.data_dir = data_dir
        self.publish_every = publish_every
        self.store = open_store(spec, data_dir)
        super().__init__(name, cmd, logs, env)

    def status(self) -> LearnerStatus:
        s = self.store.learner_status()
        return s if s is not None else LearnerStatus(heartbeat=0.0, updates=0, state="starting")

    def wait_running(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            s = self.status()
            if s.state == "running" and s.updates > 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not start updating:\n{self.log_tail()}")

    def checkpoint_mtime(self) -> float:
        try:
            return (self.data_dir / "learner" / "checkpoint.pt").stat().st_mtime
        except OSError:
            return 0.0


# --- a lean HTTP/1.1 client ---------------------------------------------------------------------
class Conn:
    """A blocking keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end].decode("latin-1").split("\r\n")
                length = next(
                    int(h.split(":", 1)[1])
                    for h in head[1:]
                    if h.lower().startswith("content-length")
                )
                if len(self.buf) >= end + 4 + length:
                    body_out = self.buf[end + 4 : end + 4 + length]
                    self.buf = self.buf[end + 4 + length :]
                    return int(head[0].split()[1]), body_out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def start_service(task: Path, data_dir: Path, logs: Path) -> tuple[Child, int]:
    port = processes.free_port()
    args = ["serve", "--task", str(task), "--data-dir", str(data_dir), "--port", str(port)]
    cmd = processes.robot_sac_command([*args, "--device", "cpu", "--log-level", "warning"])
    child = Child("service", cmd, logs, dict(os.environ))
    try:
        processes.wait_ready(f"http://127.0.0.1:{port}", child.proc, child.log_path, 120)
    except processes.NotReady as exc:
        child.stop()
        raise RuntimeError(f"the service did not get ready ({exc}):\n{child.log_tail()}") from None
    return child, port


class Robots:
    """``n`` robots calling /v1/act at ``hz`` each (one thread and connection per robot)."""

    def __init__(self, port: int, n: int, hz: float) -> None:
        self.port, self.n, self.hz = port, n, hz
        self.seen: list[tuple[float, int]] = []  # (wall time of the answer, policy_version)
        self.latencies: list[float] = []
        self.errors = 0
        self.latest: int | None = None
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        rng = np.random.default_rng(100 + i)
        bodies = [
            json.dumps({"obs": rng.standard_normal(OBS_DIM).round(5).tolist()}).encode()
            for _ in range(32)
        ]
        conn: Conn | None = None
        t0 = time.monotonic() + i / (self.n * self.hz)
        k = 0
        while True:
            delay = t0 + k / self.hz - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            k += 1
            try:
                if conn is None:
                    conn = Conn(self.port)
                sent = time.perf_counter()
                status, body = conn.post("/v1/act", bodies[k % 32])
                self.latencies.append(time.perf_counter() - sent)
                if status != 200:
                    self.errors += 1
                    continue
                version = int(json.loads(body)["policy_version"])
                self.seen.append((time.time(), version))
                if self.latest is None or version > self.latest:
                    self.latest = version
            except (OSError, ValueError, KeyError):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:  # started
                t.join()


def http_sink(port: int) -> Callable[[list[Step]], object]:
    """Posts batches to the service's /v1/transitions (used from one producer thread)."""
    holder: list[Conn] = []

    def sink(steps: list[Step]) -> None:
        if not holder:
            holder.append(Conn(port))
        body = json.dumps({"transitions": [dataclasses.asdict(s) for s in steps]}).encode()
        try:
            status, text = holder[0].post("/v1/transitions", body)
        except OSError:
            holder.clear()
            raise
        if status != 200:
            raise RuntimeError(f"POST /v1/transitions: {status} {text[:200]!r}")

    return sink


# --- measurements -------------------------------------------------------------------------------
def op_costs(spec: TaskSpec, data_dir: Path, device: torch.device, reps: int) -> dict[str, Any]:
    """Milliseconds of one publish, checkpoint, status write and 20-ms log pull of a Learner."""
    from robot_sac.services.learner import Learner
    from robot_sac.settings import Settings

    store = open_store(spec, data_dir)
    prefill(store)
    settings = Settings(data_dir=data_dir)
    learner = Learner(settings, spec, store, device)  # with tensorboard, as the CLI makes it
    learner.start()
    learner.run(lambda: False, max_updates=30)
    position = store.last_position() - LOG_RATE // 50  # what one pull sees at 500/s

    def timed(fn: Callable[[], object]) -> float:
        fn()  # warm
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    out = {
        "publish_ms": timed(learner.publish),
        "checkpoint_ms": timed(learner.checkpoint),
        "status_write_ms": timed(learner.write_status),
        "control_read_ms": timed(store.control),
        "pull_10_rows_ms": timed(lambda: learner._add(store.read_after(position, 10_000), 0)),
        "pull_empty_ms": timed(lambda: store.read_after(store.last_position(), 10_000)),
    }
    learner.close(publish=False)
    store.close()
    return out


def predicted_ratio(costs: dict[str, Any], bare: float, publish_every: int, ckpt: int) -> float:
    """learner / bare if the loop's only costs were these, at bare's update rate.

    Per second the loop reads the control state 20 times, pulls 50 times and writes its status
    twice; per update it publishes 1/publish_every and checkpoints 1/checkpoint_every times.
    """
    fixed = (
        20 * costs["control_read_ms"] + 50 * costs["pull_10_rows_ms"] + 2 * costs["status_write_ms"]
    ) / 1e3
    per_update = (costs["publish_ms"] / publish_every + costs["checkpoint_ms"] / ckpt) / 1e3
    return (1 - fixed) / (1 + bare * per_update)


def idle_cpu(lp: LearnerProc, seconds: float) -> dict[str, Any]:
    """CPU share (of one core) of a learner paused by the operator, with nothing to do."""
    lp.resume()
    lp.store.update_control(learner_paused=True)
    time.sleep(1.0)
    c0, t0 = proc_cpu_seconds(lp.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc_cpu_seconds(lp.pid), time.monotonic()
    state = lp.status().state
    lp.store.update_control(learner_paused=False)
    lp.pause()
    return {"cpu_share": (c1 - c0) / (t1 - t0), "seconds": t1 - t0, "state": state}


class QuietWaiter:
    """Before a window, waits (within a total budget) until other processes leave the cores."""

    def __init__(self, budget_s: float, quiet_cpu: float) -> None:
        self.left, self.quiet_cpu = budget_s, quiet_cpu
        self.waited = 0.0

    def __call__(self) -> None:
        while self.left > 0:
            meter = CpuMeter([os.getpid()])
            time.sleep(0.5)
            if not meter.stop()["foreign_cpu"] >= self.quiet_cpu:  # quiet, or /proc unreadable
                return
            self.left -= 0.5
            self.waited += 0.5


def bare_window(
    update: Callable[[], object], sync: Callable[[], None], seconds: float
) -> dict[str, Any]:
    """The core update loop in this process for ``seconds``."""
    chunk = 20
    n = 0
    meter = CpuMeter([os.getpid()])
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(chunk):
            update()
        n += chunk
        sync()
    return {"updates_per_s": n / (time.perf_counter() - t0), **meter.stop()}


def learner_window(
    lp: LearnerProc,
    sink: Callable[[list[Step]], object],
    producer: Producer,
    seconds: float,
    warm: float,
) -> dict[str, Any]:
    """Resume the learner with the producer on; measure over ``seconds`` after ``warm``.

    A learner resumed after more than ``publish_seconds`` publishes at once (its timer ran on
    while it was stopped): that lands in the warm-up, so its default publishing (every 1,000
    updates) is seen less often in the windows than in a steady run; the publish cost timed in
    this process and the predicted ratio account for it instead.
    """
    lp.resume()
    producer.start(sink)
    try:
        time.sleep(warm)
        lp.check_alive()
        first = lp.status()
        samples = [(first.heartbeat, first.updates)]
        reported = []  # the row's own smoothed updates_per_s, for comparison
        cpu0, ru0 = proc_cpu_seconds(lp.pid), resource.getrusage(resource.RUSAGE_SELF)
        meter = CpuMeter([os.getpid(), lp.pid])
        t0 = time.monotonic()
        mtime = lp.checkpoint_mtime()
        checkpoints = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(STATUS_POLL_S)
            s = lp.status()
            if s.heartbeat != samples[-1][0]:
                samples.append((s.heartbeat, s.updates))
                reported.append(s.updates_per_s)
            m = lp.checkpoint_mtime()
            if m != mtime:
                checkpoints, mtime = checkpoints + 1, m
        wall = time.monotonic() - t0
        cpu1, ru1 = proc_cpu_seconds(lp.pid), resource.getrusage(resource.RUSAGE_SELF)
        foreign = meter.stop()["foreign_cpu"]
    finally:
        prod = producer.stop()
        lp.pause()
    (h0, u0), (h1, u1) = samples[0], samples[-1]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples)]
    stalls = [b[0] - a[0] for a, b in itertools.pairwise(samples) if b[1] == a[1]]
    versions = [r for r in lp.store.list_policies() if h0 < r.registered_at <= h1]
    bench_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {
        "updates_per_s": (u1 - u0) / (h1 - h0) if h1 > h0 else 0.0,
        "updates": u1 - u0,
        "reported_updates_per_s": median(reported),
        "seconds": h1 - h0,
        "status_rows": len(samples) - 1,
        "status_rows_per_s": (len(samples) - 1) / wall,
        "max_status_gap_s": max(gaps, default=None),
        "stalled_status_intervals": len(stalls),
        "versions_published": len(versions),
        "checkpoints": checkpoints,
        "learner_cpu_share": (cpu1 - cpu0) / wall,  # cores
        "bench_process_cpu_share": bench_cpu / wall,  # producer thread + status polling
        "foreign_cpu": foreign,  # cores used by processes not of this benchmark
        "producer": prod,
    }


def publish_to_served(
    lp: LearnerProc,
    task: Path,
    logs: Path,
    robots_n: int,
    want_versions: int,
    cap_s: float,
) -> dict[str, Any]:
    # The learner runs while the service starts: a stopped learner may hold the store's write
    # lock, which the service's start-up needs.
    lp.resume()
    service, port = start_service(task, lp.data_dir, logs)
    robots = Robots(port, robots_n, 50.0)
    producer = Producer("robots")
    sink = http_sink(port)

    def sink_with_version(steps: list[Step]) -> None:
        producer.policy_version = robots.latest
        sink(steps)

    producing = False
    try:
        robots.start()
        time.sleep(1.0)  # robots connected and answered by the served version
        t_start = time.time()
        producer.start(sink_with_version)
        producing = True
        s0 = lp.status()
        cpu0, m0 = proc_cpu_seconds(lp.pid), time.monotonic()
        count = 0
        while time.monotonic() - m0 < cap_s and count < want_versions:
            time.sleep(0.5)
            lp.check_alive()
            service.check_alive()
            count = sum(r.registered_at >= t_start for r in lp.store.list_policies())
        s1 = lp.status()
        learner_cpu = (proc_cpu_seconds(lp.pid) - cpu0) / (time.monotonic() - m0)
        prod = producer.stop()
        producing = False
        lp.pause()  # no more versions; give the last ones time to be served
        time.sleep(1.5)
    finally:
        if producing:
            producer.stop()
        robots.stop()
        service.stop()
    records = [r for r in lp.store.list_policies() if r.registered_at >= t_start]
    seen = sorted(robots.seen)
    times = np.array([t for t, _ in seen])
    versions = np.array([v for _, v in seen])
    delays, exact, unseen = [], 0, []
    for r in records:
        hit = np.nonzero(versions >= r.version)[0]
        if len(hit) == 0:
            unseen.append(r.version)
            continue
        delays.append(float(times[hit[0]] - r.registered_at))
        exact += bool((versions == r.version).any())
    lat = np.asarray(robots.latencies) * 1e3
    return {
        "versions_published": len(records),
        "versions_seen": len(delays),
        "versions_served_exactly": exact,  # the rest were superseded before the service swapped
        "unseen_versions": unseen,
        "publish_to_served_s": {
            "median": statistics.median(delays) if delays else None,
            "max": max(delays) if delays else None,
            "all": delays,
        },
        "robots": robots_n,
        "act_answers": len(seen),
        "act_errors": robots.errors,
        "act_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "act_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "learner_updates_per_s": (s1.updates - s0.updates) / (s1.heartbeat - s0.heartbeat)
        if s1.heartbeat > s0.heartbeat
        else None,
        "learner_cpu_share": learner_cpu,
        "producer": prod,
    }


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (learner and bare loop)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads of both"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the three non-bare windows"
    )
    parser.add_argument("--window", type=float, default=None, help="seconds per measured window")
    parser.add_argument("--publish-every", type=int, default=1000, help="the default learner")
    parser.add_argument("--frequent", type=int, default=200, help="publish_every of the other")
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--robots", type=int, default=4, help="robots at 50 Hz while serving")
    parser.add_argument("--versions", type=int, default=None, help="versions to time served")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="seconds in all to wait for other processes to leave the cores before windows "
        "(default 90, --quick 20)",
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to make the data dirs (default: $TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "learner_loop.json"
    )
    args = parser.parse_args()
    q = args.quick
    rounds = args.rounds or (1 if q else 4)
    window = args.window or (3.0 if q else 6.0)
    warm = 1.5 if q else 2.0
    want_versions = args.versions or (6 if q else 20)
    cap_s = 20.0 if q else 60.0
    if args.wait_quiet is None:
        args.wait_quiet = 20.0 if q else 90.0

    signal.signal(signal.SIGTERM, _interrupt)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    spec = task_spec()
    tmp = Path(tempfile.mkdtemp(prefix="learner-loop-", dir=args.tmp))
    logs = tmp / "logs"
    logs.mkdir()
    task = tmp / "task.json"
    task.write_text(spec.model_dump_json())
    children: list[Child] = []
    from robot_sac.settings import Settings

    base = Settings()
    results: dict[str, Any] = {
        "benchmark": "learner_loop",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "setup": {
            "obs": OBS_DIM,
            "action": ACTION_DIM,
            "hidden": list(spec.sac.hidden),
            "batch": BATCH,
            "utd": spec.sac.utd,
            "learning_starts": spec.sac.learning_starts,
            "prefill": PREFILL,
            "log_rate_per_s": LOG_RATE,
            "log_batch": LOG_BATCH,
            "threads": args.threads,
            "publish_every": {"learner": args.publish_every, "learner_frequent": args.frequent},
            "publish_seconds": base.publish_seconds,
            "checkpoint_every": args.checkpoint_every,
            "rounds": rounds,
            "window_s": window,
            "warm_s": warm,
            "quick": q,
        },
    }
    t_begin = time.monotonic()
    try:
        learners: dict[str, LearnerProc] = {}
        for name, every in (("learner", args.publish_every), ("learner_frequent", args.frequent)):
            data_dir = tmp / name
            store = open_store(spec, data_dir)
            prefill(store)
            store.close()
            lp = LearnerProc(
                name,
                spec,
                task,
                data_dir,
                logs,
                device=args.device,
                threads=args.threads,
                publish_every=every,
                checkpoint_every=args.checkpoint_every,
            )
            children.append(lp)
            learners[name] = lp

        for lp in learners.values():
            lp.wait_running()
            lp.pause()
        print("0. one-off costs of a Learner in this process", flush=True)
        costs = op_costs(spec, tmp / "costs", device, reps=3 if q else 5)
        results["op_costs_ms"] = costs
        print("   " + ", ".join(f"{k[:-3]} {v:.2f} ms" for k, v in costs.items()))
        idle = idle_cpu(learners["learner"], 1.5 if q else 4.0)
        results["paused_learner"] = idle
        print(
            f"   a paused learner ({idle['state']}) uses {idle['cpu_share']:.1%} of a core",
            flush=True,
        )

        # The bare loop, as bench/learner_throughput.py times it (on the learner's replay size).
        from robot_sac.replay import ReplayBuffer
        from robot_sac.sac import SAC

        torch.manual_seed(0)
        sac = SAC(OBS_DIM, ACTION_DIM, spec.sac, device=device)
        replay = ReplayBuffer(spec.sac.buffer_size, OBS_DIM, ACTION_DIM, device)
        rng = np.random.default_rng(0)
        replay.add(
            rng.standard_normal((PREFILL, OBS_DIM), dtype=np.float32),
            rng.uniform(-1, 1, (PREFILL, ACTION_DIM)).astype(np.float32),
            rng.standard_normal(PREFILL, dtype=np.float32),
            rng.standard_normal((PREFILL, OBS_DIM), dtype=np.float32),
            np.zeros(PREFILL, np.float32),
        )
        if device.type == "cuda" and base.cuda_graphs:  # what the learner runs on CUDA
            from robot_sac.cuda_graphs import GraphedUpdate

            update: Callable[[], object] = GraphedUpdate(sac, replay)
        else:

            def update() -> object:
                return sac.update(replay.sample(BATCH))

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        bare_window(update, sync, 1.0)  # warm-up

        scratch = open_store(spec, tmp / "scratch")
        producer = Producer("robot")
        others = ["bare+producer", "learner", "learner_frequent"]
        conditions = ["bare", *others]
        sequence = [n for r in range(rounds) for n in (others if r % 2 == 0 else others[::-1])]
        print(
            f"1. {len(sequence)} windows of {window:.0f} s, each between two bare windows "
            f"(ratio: to their mean); the log grows at {LOG_RATE}/s in all but the bare ones",
            flush=True,
        )
        # Quiet: other processes use no more than the cores our threads leave free, and a little.
        quiet_cpu = max(0, (os.cpu_count() or 1) - args.threads) + QUIET_CPU
        results["setup"]["quiet_below_foreign_cores"] = quiet_cpu
        wait_quiet = QuietWaiter(args.wait_quiet, quiet_cpu)
        wait_quiet()
        bares = [bare_window(update, sync, window)]
        windows: list[dict[str, Any]] = []
        for i, name in enumerate(sequence):
            wait_quiet()
            if name == "bare+producer":
                producer.start(scratch.append)
                try:
                    w = bare_window(update, sync, window)
                finally:
                    w["producer"] = producer.stop()
            else:
                lp = learners[name]
                w = learner_window(lp, lp.store.append, producer, window, warm)
            wait_quiet()
            bares.append(bare_window(update, sync, window))
            before, after = bares[-2], bares[-1]
            w["condition"] = name
            w["bare_around"] = [before["updates_per_s"], after["updates_per_s"]]
            w["ratio"] = w["updates_per_s"] / statistics.fmean(w["bare_around"])
            w["foreign_cpu_max"] = float(  # NaN if any is
                np.max([w["foreign_cpu"], before["foreign_cpu"], after["foreign_cpu"]])
            )
            windows.append(w)
            print(
                f"   {i + 1:2d}/{len(sequence)} {name:16s} {w['updates_per_s']:6.1f} updates/s, "
                f"bare around {w['bare_around'][0]:6.1f} {w['bare_around'][1]:6.1f}: ratio "
                f"{w['ratio']:.3f}   (other processes used up to {w['foreign_cpu_max']:.2f} "
                "cores)",
                flush=True,
            )
        scratch.close()
        results["waited_for_quiet_s"] = wait_quiet.waited
        if wait_quiet.waited:
            print(f"   (waited {wait_quiet.waited:.0f} s in all for other processes to finish)")
        results["bare_windows"] = bares
        results["windows"] = windows

        summary: dict[str, Any] = {
            "bare": {
                "updates_per_s": median([b["updates_per_s"] for b in bares]),
                "windows": len(bares),
            }
        }
        for name in others:
            w = [x for x in windows if x["condition"] == name]
            quiet = [x["ratio"] for x in w if x["foreign_cpu_max"] < quiet_cpu]
            s: dict[str, Any] = {
                "updates_per_s": median([x["updates_per_s"] for x in w]),
                "ratio_to_bare": median([x["ratio"] for x in w]),
                "ratios": [x["ratio"] for x in w],
                "ratio_to_bare_quiet_windows": median(quiet) if quiet else None,
                "quiet_windows": len(quiet),
            }
            if name.startswith("learner"):
                s["versions_published"] = sum(x["versions_published"] for x in w)
                s["checkpoints"] = sum(x["checkpoints"] for x in w)
                s["status_rows_per_s"] = median([x["status_rows_per_s"] for x in w])
                s["max_status_gap_s"] = max(x["max_status_gap_s"] or 0.0 for x in w)
                s["stalled_status_intervals"] = sum(x["stalled_status_intervals"] for x in w)
                s["learner_cpu_share"] = median([x["learner_cpu_share"] for x in w])
                s["reported_updates_per_s"] = median([x["reported_updates_per_s"] for x in w])
                s["predicted_ratio_from_op_costs"] = predicted_ratio(
                    costs,
                    summary["bare"]["updates_per_s"],
                    learners[name].publish_every,
                    args.checkpoint_every,
                )
            p = [x["producer"] for x in w]
            s["producer_per_s"] = median([x["per_s"] for x in p])
            s["producer_cpu_share"] = median([x["cpu_share"] for x in p])
            s["producer_errors"] = sum(x["errors"] for x in p)
            summary[name] = s
        results["summary"] = summary

        print(
            f"2. publish-to-served: service + {args.robots} robots at 50 Hz + {LOG_RATE} "
            f"transitions/s over HTTP, learner publishing every {args.frequent} updates",
            flush=True,
        )
        served = publish_to_served(
            learners["learner_frequent"], task, logs, args.robots, want_versions, cap_s
        )
        results["publish_to_served"] = served
    except KeyboardInterrupt:
        print("interrupted: stopping the learners and the service", file=sys.stderr)
        raise
    finally:
        exit_codes = {c.name: c.stop() for c in children}
        for c in children:
            if isinstance(c, LearnerProc):
                c.store.close()
        if args.keep:
            print(f"data and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["learner_exit_codes"] = exit_codes
    results["seconds"] = time.monotonic() - t_begin

    # --- the summary -----------------------------------------------------------------------
    # The verdict is read from the quiet windows: in the others a process not of this benchmark
    # took cores from one side of the ratio and not the other.
    headline = summary["learner"]["ratio_to_bare_quiet_windows"]
    goal_ratio = None if headline is None else headline >= 0.90
    p = served["publish_to_served_s"]
    goal_served = (
        p["max"] is not None
        and p["max"] < 1.0
        and not served["unseen_versions"]
        and served["versions_seen"] > 0
    )
    results["goals"] = {
        "learner_over_bare_ge_0_90": goal_ratio,
        "publish_to_served_max_lt_1s": goal_served,
    }
    print()
    print(
        f"device {device}, torch {torch.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} cpus; {len(sequence)} windows of {window:.0f} s"
    )
    print(
        f"{'':17s} {'updates/s':>9s} {'/bare':>6s} {'quiet':>6s} {'predicted':>9s} "
        f"{'cores':>5s}  producer"
    )
    for name in conditions:
        s = summary[name]
        ratio = f"{s['ratio_to_bare']:6.3f}" if "ratio_to_bare" in s else ""
        quiet = s.get("ratio_to_bare_quiet_windows")
        quiet_s = f"{quiet:6.3f}" if quiet is not None else ("     -" if ratio else "")
        pred = s.get("predicted_ratio_from_op_costs")
        pred_s = f"{pred:9.3f}" if pred is not None else " " * 9
        cores = f"{s['learner_cpu_share']:5.2f}" if "learner_cpu_share" in s else " " * 5
        prod = (
            f"{s['producer_per_s']:.0f}/s at {s['producer_cpu_share']:.1%} of a core"
            if "producer_per_s" in s
            else ""
        )
        print(
            f"{name:17s} {s['updates_per_s']:9.1f} {ratio:>6s} {quiet_s:>6s} {pred_s} {cores}  "
            f"{prod}"
        )
    for name in others[1:]:
        s = summary[name]
        print(
            f"{name}: {s['versions_published']} versions and {s['checkpoints']} checkpoints "
            f"in the windows; status row {s['status_rows_per_s']:.1f}/s, longest gap "
            f"{s['max_status_gap_s']:.2f} s, {s['stalled_status_intervals']} rows without "
            f"progress; the row's own updates_per_s {s['reported_updates_per_s']:.1f}"
        )
    print(
        f"one publish {costs['publish_ms']:.1f} ms, checkpoint {costs['checkpoint_ms']:.1f} ms, "
        f"status write {costs['status_write_ms']:.2f} ms, pull {costs['pull_10_rows_ms']:.2f} ms; "
        f"a paused learner uses {idle['cpu_share']:.1%} of a core"
    )
    verdict = {True: "met", False: "NOT met", None: "inconclusive: no quiet window"}[goal_ratio]
    lf = summary["learner_frequent"]
    lf_quiet = lf["ratio_to_bare_quiet_windows"]
    print(
        f"learner / bare: {'-' if headline is None else f'{headline:.3f}'} over "
        f"{summary['learner']['quiet_windows']} quiet windows, "
        f"{summary['learner']['ratio_to_bare']:.3f} over all (median of the ratios to the bare "
        f"windows around); goal >= 0.90: {verdict}. Publishing every {args.frequent}: "
        f"{'-' if lf_quiet is None else f'{lf_quiet:.3f}'} quiet, {lf['ratio_to_bare']:.3f} all"
    )
    med = "-" if p["median"] is None else f"{1e3 * p['median']:.0f} ms"
    mx = "-" if p["max"] is None else f"{1e3 * p['max']:.0f} ms"
    print(
        f"publish-to-served: {served['versions_seen']}/{served['versions_published']} versions "
        f"seen ({served['versions_served_exactly']} served exactly, the rest superseded), median "
        f"{med}, max {mx} (goal < 1 s: {'met' if goal_served else 'NOT met'}); act p50 "
        f"{served['act_p50_ms']:.1f} ms p99 {served['act_p99_ms']:.1f} ms, "
        f"{served['act_errors']} errors; learner meanwhile "
        f"{served['learner_updates_per_s'] or 0:.1f} updates/s"
    )
    print(f"total {results['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
