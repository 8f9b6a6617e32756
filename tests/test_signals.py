"""A signal that ends `robot-sac up` or `robot-sac sim` ends every process it started; `serve`
and `learn` run on their own stop cleanly on SIGHUP too.

SIGTERM (``kill``), SIGHUP (a closed SSH session: the terminal goes away and the shell hangs up
the job's process group) and SIGINT (Ctrl-C: the terminal signals the foreground group) stop
them as Ctrl-C always did: the robots flush, the learner checkpoints, the exit code is 0. A
``kill -9``, which no handler sees, still leaves nothing running: on Linux the children die with
their parent. Each test finds the children by walking /proc before the signal and then checks
each pid, the port and the learner's checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from robot_sac import processes
from robot_sac.sim.envs import task_spec
from tests.servers import ThreadService, start_thread_service

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="children are found through /proc"
)

ENV = "Pendulum-v1"  # the lightest task: the tests are about processes, not learning
ROBOTS = 2


def wait_for(what: str, check: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kinds(pids: list[int]) -> dict[str, list[int]]:
    """The children by what they run: the service, the learner, the robots, helpers."""
    out: dict[str, list[int]] = {"serve": [], "learn": [], "robot": [], "other": []}
    for pid in pids:
        words = cmdline(pid).split()
        if "robot_sac.cli" in words and "serve" in words:
            out["serve"].append(pid)
        elif "robot_sac.cli" in words and "learn" in words:
            out["learn"].append(pid)
        elif "multiprocessing.spawn" in cmdline(pid) and "spawn_main" in cmdline(pid):
            out["robot"].append(pid)
        else:
            out["other"].append(pid)
    return out


def learner_online(url: str) -> bool:
    """The learner has started (its SIGTERM handler is set) and told the service so."""
    try:
        learner = httpx.get(f"{url}/v1/admin/status", timeout=2.0).json().get("learner")
    except (httpx.HTTPError, ValueError):
        return False
    return bool(learner) and learner.get("state") not in (None, "offline")


class Up:
    """`robot-sac up` (no --steps: it runs until stopped) on a free port, started as a shell
    would start a job: a process group of its own."""

    def __init__(self, tmp_path: Path, stdout: int | None = None) -> None:
        self.data = tmp_path / "data"
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "up.log"
        args = ["up", "--env", ENV, "--robots", str(ROBOTS), "--data-dir", str(self.data)]
        args += ["--port", str(self.port)]
        if stdout is None:
            self.proc = processes.spawn(args, self.log, death_signal=None)
        else:  # on a terminal of the test's making
            self.proc = subprocess.Popen(
                processes.robot_sac_command(args),
                stdin=stdout,
                stdout=stdout,
                stderr=stdout,
                start_new_session=True,
            )
        self.children: list[int] = []

    def wait_running(self) -> dict[str, list[int]]:
        """Until the service answers, the learner is online and every robot acts; its children."""
        wait_for("the service", lambda: processes.port_free(self.port) is False, 180)
        processes.wait_ready(self.url, self.proc, self.log, timeout=180)
        wait_for("the learner", lambda: learner_online(self.url), 180)
        wait_for(
            "the robots",
            lambda: len(kinds(processes.descendants(self.proc.pid))["robot"]) == ROBOTS,
            180,
        )
        wait_for("transitions", lambda: self.transitions() > 0, 120)
        self.children = processes.descendants(self.proc.pid)
        found = kinds(self.children)
        assert len(found["serve"]) == 1 and len(found["learn"]) == 1, found
        return found

    def transitions(self) -> int:
        try:
            return int(httpx.get(f"{self.url}/v1/admin/status", timeout=2.0).json()["transitions"])
        except (httpx.HTTPError, ValueError, KeyError):
            return 0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def learner_log(self) -> str:
        return (self.data / "logs" / "learner.log").read_text(errors="replace")

    def kill_all(self) -> None:
        kill_all(self.proc, self.children)


def kill_all(proc: subprocess.Popen[bytes], children: list[int]) -> None:
    """Leave nothing behind, whatever the test found (SIGKILL to the children it recorded)."""
    processes.kill(proc)
    for pid in children:
        if processes.running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path)
    yield running
    running.kill_all()


def assert_all_gone(children: list[int], timeout: float) -> None:
    """Every pid in ``children`` ends within ``timeout`` s (a zombie has ended)."""
    deadline = time.monotonic() + timeout
    while left := [pid for pid in children if processes.running(pid)]:
        assert time.monotonic() < deadline, [(pid, cmdline(pid)) for pid in left]
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [
        pytest.param(signal.SIGTERM, False, id="SIGTERM"),  # `kill PID`
        pytest.param(signal.SIGINT, True, id="SIGINT"),  # Ctrl-C: the whole foreground group
    ],
)
def test_a_signal_to_up_stops_every_part_cleanly(up: Up, sig: int, to_group: bool) -> None:
    up.wait_running()
    checkpoint = up.data / "learner" / "checkpoint.pt"
    sent = time.time()
    if to_group:
        os.killpg(up.proc.pid, sig)
    else:
        os.kill(up.proc.pid, sig)
    assert up.proc.wait(timeout=180) == 0, up.output()[-3000:]
    assert "stopping: robots flush their transitions" in up.output()
    assert_all_gone(up.children, 10)
    assert processes.port_free(up.port)
    # the learner was stopped with SIGTERM and checkpointed on its way out
    assert checkpoint.exists() and checkpoint.stat().st_mtime >= sent - 1
    assert "learner stopped at" in up.learner_log()
    assert "done:" in up.output()  # the summary, read from the service before it stopped


def test_a_closed_terminal_stops_up_cleanly(tmp_path: Path) -> None:
    """An SSH session closes: up's terminal goes away (writes to it fail) and its job's process
    group gets SIGHUP. Up still stops every part cleanly and exits 0."""
    primary, secondary = os.openpty()
    running = Up(tmp_path, stdout=secondary)
    os.close(secondary)
    shown = bytearray()
    try:
        # read the terminal (a full one would block up's writes) until everything runs
        def drain() -> None:
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                shown.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        wait_for("the service", lambda: not processes.port_free(running.port), 180)
        processes.wait_ready(running.url, running.proc, timeout=180)
        wait_for("the learner", lambda: learner_online(running.url), 180)
        wait_for(
            "the robots",
            lambda: len(kinds(processes.descendants(running.proc.pid))["robot"]) == ROBOTS,
            180,
        )
        wait_for("transitions", lambda: running.transitions() > 0, 120)
        running.children = processes.descendants(running.proc.pid)
        assert b"robot-sac up" in shown
        sent = time.time()
        os.close(primary)  # the terminal is gone: up's writes to it now fail with EIO
        primary = -1
        os.killpg(running.proc.pid, signal.SIGHUP)
        assert running.proc.wait(timeout=180) == 0
        assert_all_gone(running.children, 10)
        assert processes.port_free(running.port)
        checkpoint = running.data / "learner" / "checkpoint.pt"
        assert checkpoint.exists() and checkpoint.stat().st_mtime >= sent - 1
        assert "learner stopped at" in running.learner_log()
    finally:
        if primary >= 0:
            os.close(primary)
        running.kill_all()


def test_kill_9_of_up_leaves_nothing_running(up: Up) -> None:
    """No handler sees SIGKILL: the children die with their parent (Linux), the learner by its
    own SIGTERM handler, so it still checkpoints."""
    found = up.wait_running()
    sent = time.time()
    os.kill(up.proc.pid, signal.SIGKILL)
    assert up.proc.wait(timeout=10) == -signal.SIGKILL
    assert_all_gone(up.children, 30)
    assert processes.port_free(up.port)
    checkpoint = up.data / "learner" / "checkpoint.pt"
    assert checkpoint.exists() and checkpoint.stat().st_mtime >= sent - 1
    assert found["learn"] and "learner stopped at" in up.learner_log()


# --- sim: robots against a service this test runs ----------------------------------------------
@pytest.fixture
def pendulum_service(tmp_path: Path) -> Iterator[ThreadService]:
    svc = start_thread_service(tmp_path / "service", spec=task_spec(ENV))
    yield svc
    svc.stop()


def start_sim(service: ThreadService, tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`robot-sac sim` against ``service`` (no --steps), once every robot has logged."""
    args = ["sim", "--url", service.url, "--env", ENV, "--robots", str(ROBOTS)]
    proc = processes.spawn(args, tmp_path / "sim.log", death_signal=None)

    def robots_logged() -> bool:
        robots = httpx.get(f"{service.url}/v1/admin/robots", timeout=5.0).json()["robots"]
        return len(robots) == ROBOTS

    wait_for("the robots", lambda: len(kinds(processes.descendants(proc.pid))["robot"]) == ROBOTS)
    wait_for("every robot acting", robots_logged)
    return proc, processes.descendants(proc.pid)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [
        pytest.param(signal.SIGTERM, False, id="SIGTERM"),
        pytest.param(signal.SIGHUP, True, id="SIGHUP"),
        pytest.param(signal.SIGINT, True, id="SIGINT"),
    ],
)
def test_a_signal_to_sim_stops_the_robots_after_they_flush(
    pendulum_service: ThreadService, tmp_path: Path, sig: int, to_group: bool
) -> None:
    proc, children = start_sim(pendulum_service, tmp_path)
    try:
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        assert proc.wait(timeout=120) == 0, (tmp_path / "sim.log").read_text()[-3000:]
        assert "stopping the robots" in (tmp_path / "sim.log").read_text()
        assert_all_gone(children, 10)
    finally:
        kill_all(proc, children)


def test_kill_9_of_sim_leaves_no_robot_running(
    pendulum_service: ThreadService, tmp_path: Path
) -> None:
    proc, children = start_sim(pendulum_service, tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert_all_gone(children, 20)
    finally:
        kill_all(proc, children)


def test_a_robot_sent_sigterm_flushes_and_exits_0(
    pendulum_service: ThreadService, tmp_path: Path
) -> None:
    """What a robot does when its parent dies (the kernel sends it SIGTERM): it stops after the
    step, flushes and exits 0, so `sim` counts no failed robot."""
    proc, children = start_sim(pendulum_service, tmp_path)
    try:
        robot = kinds(children)["robot"][0]
        os.kill(robot, signal.SIGTERM)
        assert_all_gone([robot], 10)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "sim.log").read_text()[-3000:]
        assert_all_gone(children, 10)
    finally:
        kill_all(proc, children)


# --- serve and learn, each run on its own ---------------------------------------------------------
def test_a_closed_terminal_stops_serve_cleanly(tmp_path: Path) -> None:
    """SIGHUP (its terminal gone) stops a service run on its own as Ctrl-C does: it drains and
    exits 0, and its port is free again."""
    port = processes.free_port()
    log = tmp_path / "serve.log"
    args = ["serve", "--env", ENV, "--data-dir", str(tmp_path / "d"), "--port", str(port)]
    proc = processes.spawn(args, log, death_signal=None)
    try:
        processes.wait_ready(f"http://127.0.0.1:{port}", proc, log)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert "Finished server process" in log.read_text()
        assert processes.port_free(port)
    finally:
        processes.kill(proc)


def test_a_closed_terminal_stops_learn_cleanly(tmp_path: Path) -> None:
    """SIGHUP stops a learner run on its own as Ctrl-C does: it says where its checkpoint is and
    exits 0."""
    log = tmp_path / "learn.log"
    proc = processes.spawn(
        ["learn", "--env", ENV, "--data-dir", str(tmp_path / "d")], log, death_signal=None
    )
    try:
        wait_for("the learner to wait for transitions", lambda: "waiting" in log.read_text())
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "learner stopped at 0 updates" in log.read_text()
    finally:
        processes.kill(proc)
