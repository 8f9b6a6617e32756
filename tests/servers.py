"""Real services for tests: uvicorn on a free loopback port, in a thread or in a subprocess.

Subprocesses are started, waited for and stopped by :mod:`robot_sac.processes`, the harness
`up` and the benchmarks use too (``free_port`` is re-exported from it for the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from robot_sac import processes
from robot_sac.processes import free_port
from robot_sac.schemas import TaskSpec
from robot_sac.services.inference import create_app
from robot_sac.services.inference.server import loopback_socket, server_config
from robot_sac.settings import Settings

# HalfCheetah's sizes: 17 observations, 6 actions in [-1, 1].
CHEETAH = TaskSpec(name="cheetah", obs_dim=17, action_low=(-1.0,) * 6, action_high=(1.0,) * 6)
ROBOT_TOKEN = "robot-secret-token"
OPERATOR_TOKEN = "operator-secret-token"


@dataclass
class ThreadService:
    """A service running in this process (real HTTP over loopback)."""

    url: str
    data_dir: Path
    spec: TaskSpec
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    app: Any
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.clients.append(c)
        return c

    @property
    def state(self) -> Any:
        return self.app.state.robot_sac

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_thread_service(
    data_dir: Path, spec: TaskSpec = CHEETAH, **settings: Any
) -> ThreadService:
    cfg = Settings(data_dir=data_dir, **settings)
    app = create_app(cfg, spec)
    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, cfg, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.01)
    return ThreadService(f"http://127.0.0.1:{port}", data_dir, spec, cfg, server, thread, app)


def write_task(path: Path, spec: TaskSpec = CHEETAH) -> Path:
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    return path


class ProcessService:
    """``robot-sac serve`` in a subprocess, for tests that kill it (started, waited for and
    stopped by :mod:`robot_sac.processes`, as `up` starts its service)."""

    def __init__(self, data_dir: Path, task_file: Path, port: int | None = None, **env: str):
        self.data_dir, self.task_file = data_dir, task_file
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"service-{self.port}.log"

    def start(self, timeout: float = 60.0) -> ProcessService:
        args = ["serve", "--task", str(self.task_file), "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port), "--log-level", "warning"]
        self.proc = processes.spawn(args, self.log, env=self.env)
        processes.wait_ready(self.url, self.proc, self.log, timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        processes.kill(self.proc)

    def terminate(self) -> int:
        """SIGTERM (the clean stop); its exit code (-9 if it had to be killed after 30 s)."""
        code = processes.stop(self.proc, 30)
        assert code is not None, "never started"
        return code


def transition(
    robot: str, episode: str, step: int, spec: TaskSpec = CHEETAH, **kw: Any
) -> dict[str, Any]:
    """A valid transition as the wire format has it; ``kw`` overrides fields."""
    base = {
        "robot_id": robot,
        "episode_id": episode,
        "step": step,
        "obs": [0.01 * step] * spec.obs_dim,
        "action": [0.0] * spec.action_dim,
        "reward": 1.0,
        "next_obs": [0.01 * (step + 1)] * spec.obs_dim,
        "terminated": False,
        "truncated": False,
        "policy_version": 0,
    }
    return {**base, **kw}


class LearnerProcess:
    """``robot-sac learn`` in a subprocess (it talks to the rest only through the store)."""

    def __init__(self, data_dir: Path, task_file: Path, **env: str) -> None:
        self.data_dir, self.task_file = data_dir, task_file
        self.env = {**os.environ, "ROBOT_SAC_LEARNER_THREADS": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "learner.log"

    def start(self) -> LearnerProcess:
        args = ["learn", "--task", str(self.task_file), "--data-dir", str(self.data_dir)]
        args += ["--no-progress", "--log-level", "warning"]
        self.proc = processes.spawn(args, self.log, env=self.env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        processes.kill(self.proc)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (it publishes, checkpoints and exits 0); -9 if it had to be killed."""
        code = processes.stop(self.proc, timeout)
        assert code is not None, "never started"
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class StoreLock:
    """Another process holding the SQLite store's write lock (``BEGIN IMMEDIATE``) until
    :meth:`release`: the store busy, as a second service or a backup tool would make it."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
