"""The process harness (robot_sac.processes) with real processes: a stop that ends what will not
stop, children that die with their parent, readiness that says why it failed, and SIGTERM and
SIGHUP turned into what Ctrl-C does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robot_sac import processes

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def wait_for(what: str, check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_if_running(pid: int) -> None:
    """Leave nothing behind when a test fails."""
    if pid and processes.running(pid):
        os.kill(pid, signal.SIGKILL)


def test_a_port_is_free_only_while_nothing_listens_on_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not processes.port_free(port)
    assert processes.port_free(port)


@linux_only
def test_stop_kills_what_ignores_sigterm_and_the_group_it_leads(tmp_path: Path) -> None:
    """A child that ignores SIGTERM, with a grandchild in its group: both end, SIGKILL, after
    the timeout; the exit code says so."""
    code = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(grandchild.pid, flush=True)
        time.sleep(600)
    """
    log = tmp_path / "child.log"
    proc = processes.spawn_command(python(code), log)
    wait_for("the grandchild", lambda: log.read_text().strip().isdigit())
    grandchild = int(log.read_text())
    try:
        assert processes.descendants(proc.pid) == [grandchild]
        t0 = time.monotonic()
        assert processes.stop(proc, timeout=1.0) == -signal.SIGKILL
        assert time.monotonic() - t0 < 10
        wait_for("the grandchild to end", lambda: not processes.running(grandchild), 10)
    finally:
        kill_if_running(grandchild)


def test_stop_lets_a_clean_stop_finish_and_returns_its_code(tmp_path: Path) -> None:
    code = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        print("ready", flush=True)
        time.sleep(600)
    """
    log = tmp_path / "child.log"
    proc = processes.spawn_command(python(code), log)
    wait_for("the handler", lambda: "ready" in log.read_text())
    assert processes.stop(proc, timeout=30) == 3
    assert processes.stop(proc, timeout=30) == 3  # stopping a stopped process: its code again
    assert processes.stop(None) is None


@linux_only
@pytest.mark.parametrize("how", ["SIGKILL", "exit"])
def test_a_spawned_child_dies_with_its_parent(tmp_path: Path, how: str) -> None:
    """A parent that spawned a child through the harness ends (killed, or exiting without
    stopping it): the child gets SIGTERM from the kernel and ends too."""
    code = f"""
        import sys, time
        from pathlib import Path
        from robot_sac import processes
        child = processes.spawn_command(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            Path({str(tmp_path)!r}) / "c.log",
        )
        print(child.pid, flush=True)
        if {how == "exit"}:
            time.sleep(1)
            sys.exit(0)
        time.sleep(600)
    """
    log = tmp_path / "parent.log"
    parent = processes.spawn_command(python(code), log, death_signal=None)
    child = 0
    try:
        wait_for("the child", lambda: log.read_text().strip().isdigit())
        child = int(log.read_text())
        assert processes.running(child)
        if how == "SIGKILL":
            os.kill(parent.pid, signal.SIGKILL)
        assert parent.wait(timeout=30) in (0, -signal.SIGKILL)
        wait_for("the child to end", lambda: not processes.running(child), 10)
    finally:
        processes.kill(parent)
        kill_if_running(child)


def test_without_a_death_signal_the_child_outlives_its_parent(tmp_path: Path) -> None:
    """The other side of the test above: it is the death signal that ends the child."""
    code = f"""
        import sys
        from pathlib import Path
        from robot_sac import processes
        child = processes.spawn_command(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            Path({str(tmp_path)!r}) / "c.log",
            death_signal=None,
        )
        print(child.pid, flush=True)
    """
    done = subprocess.run(python(code), capture_output=True, text=True, timeout=60, check=True)
    child = int(done.stdout)
    try:
        time.sleep(1.0)
        assert processes.running(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_wait_ready_says_why_a_service_never_became_ready(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    code = "import sys; print('no such task: nowhere.json', file=sys.stderr); sys.exit(2)"
    proc = processes.spawn_command([sys.executable, "-c", code], log)
    url = f"http://127.0.0.1:{processes.free_port()}"
    with pytest.raises(processes.NotReady, match=r"the service exited with 2 \(no such task"):
        processes.wait_ready(url, proc, log, timeout=60, name="the service")
    with pytest.raises(processes.NotReady, match="was not ready after 1 s"):
        processes.wait_ready(url, None, log, timeout=1.0)


def test_wait_ready_returns_once_the_path_answers_200(tmp_path: Path) -> None:
    port = processes.free_port()
    code = f"""
        import http.server, time
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/readyz" else 404)
                self.end_headers()
            def log_message(self, *a): pass
        time.sleep(1)  # not listening at first
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
    """
    proc = processes.spawn_command(python(code), tmp_path / "server.log")
    try:
        waited = processes.wait_ready(f"http://127.0.0.1:{port}", proc, timeout=60)
        assert waited >= 0.5
        assert not processes.port_free(port)
    finally:
        assert processes.stop(proc, 10) == -signal.SIGTERM
    assert processes.port_free(port)


STOPPING = """
    import os, signal, sys, time
    from robot_sac.processes import stop_signals
    with stop_signals() as signals:
        try:
            print("running", flush=True)
            time.sleep(600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            signals.begin()
            time.sleep(2)  # a slow clean stop: another signal must not cut it short
            print("stopped", flush=True)
    sys.exit(0)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_stop_as_ctrl_c_does_and_let_the_stop_finish(tmp_path: Path, sig: int) -> None:
    log = tmp_path / "cmd.log"
    proc = processes.spawn_command(python(STOPPING), log)
    try:
        wait_for("it to run", lambda: "running" in log.read_text())
        proc.send_signal(sig)
        wait_for("it to stop", lambda: "stopping" in log.read_text())
        proc.send_signal(signal.SIGTERM)  # a second signal, during the stop
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=30) == 0
        assert log.read_text().split() == ["running", "stopping", "stopped"]
    finally:
        processes.kill(proc)
