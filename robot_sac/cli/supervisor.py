"""The processes `up` starts: spawn a `robot-sac` command, wait until it is ready, stop it.

Each part runs as ``python -m robot_sac.cli <command>`` in its own session, so a Ctrl-C in the
terminal reaches only `up`, which then stops the parts in order (robots, learner, service).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the system says is free on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``robot-sac <args>`` with its output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        # its own session: Ctrl-C reaches only `up`, which stops the parts in order
        return subprocess.Popen(
            [sys.executable, "-m", "robot_sac.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0
) -> None:
    """Wait until the service at ``url`` answers ``/readyz`` (a policy is loaded)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the service did not become ready; see {log_path}")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM (a clean stop: the learner checkpoints), then SIGKILL after ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
