"""The one process harness: start a command, wait until it is ready, stop it and its children.

`robot-sac up`, the tests and the benchmarks all start their services, learners and helpers
through :func:`spawn`, wait for them with :func:`wait_ready` and end them with :func:`stop`:

* each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the command
  that started it, which then stops its parts in the order it chooses;
* on Linux each child is also told to receive SIGTERM when its parent ends (``prctl``'s
  ``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the parent leaves nothing running: the
  service stops, the learner checkpoints;
* :func:`stop` sends SIGTERM (the clean stop), then SIGKILL to the process and its process
  group after a timeout.

:func:`stop_signals` makes SIGTERM and SIGHUP end a command the way Ctrl-C does. Only the
standard library is imported at import time (httpx inside :func:`wait_ready`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

# prctl(2): the signal a process gets when the thread that created it ends.
PR_SET_PDEATHSIG = 1


def port_free(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now: nothing holds it (connections of a
    stopped one waiting out TIME_WAIT do not count: servers bind with SO_REUSEADDR, as here)."""
    with socket.socket() as s:
        if os.name == "posix":  # elsewhere SO_REUSEADDR would let it bind a port in use
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def robot_sac_command(args: Sequence[str]) -> list[str]:
    """The argv of ``robot-sac <args>`` run by this interpreter (no console script needed)."""
    return [sys.executable, "-m", "robot_sac.cli", *args]


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None off Linux (or where it cannot be had)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _death_signal_hook(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux for ``sig`` when the parent ends; None where none applies.

    The parent, for Linux, is the *thread* that started the child: only the main thread lives as
    long as the command, so a child started from another thread gets no death signal. Everything
    is looked up here, before the fork: the child only calls ``prctl``. If the parent died before
    the request took effect (the child was reparented), the child sends ``sig`` to itself.
    """
    import ctypes

    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent, signum, zero = os.getpid(), ctypes.c_ulong(sig), ctypes.c_ulong(0)

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signum, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before the request: go now
            os.kill(os.getpid(), sig)

    return hook


def spawn_command(
    cmd: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    death_signal: int | None = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own, its output appended to ``log_path``.

    ``death_signal``: what it receives when this process ends (Linux; started from the main
    thread), None for nothing. ``env``: its whole environment (default: this one's).
    """
    hook = None if death_signal is None else _death_signal_hook(death_signal)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=hook,
        )


def spawn(
    args: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    death_signal: int | None = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``robot-sac <args>``: :func:`spawn_command` with :func:`robot_sac_command`."""
    return spawn_command(robot_sac_command(args), log_path, env, cwd, death_signal)


class NotReady(RuntimeError):
    """A service exited, or did not answer its readiness check in time."""


def last_line(log_path: Path | None) -> str:
    """The last non-empty line of a log (at most 300 characters), for an error message."""
    if log_path is None:
        return ""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "empty log")[:300]


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    timeout: float = 120.0,
    path: str = "/readyz",
    name: str | None = None,
    interval: float = 0.05,
) -> float:
    """Wait until ``url + path`` answers 200, asking every ``interval`` s; the seconds that took.

    :class:`NotReady` if ``proc`` exits first or ``timeout`` passes (the process is left as it
    is: the caller stops it); its message names the service ``name`` (default: ``url``) and
    points at ``log_path``.
    """
    import httpx

    name = name or url
    see = f"; see {log_path}" if log_path is not None else ""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            why = f" ({last_line(log_path)})" if log_path is not None else ""
            raise NotReady(f"{name} exited with {proc.returncode}{why}{see}")
        try:
            if httpx.get(f"{url}{path}", timeout=1.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise NotReady(f"{name} was not ready after {timeout:.0f} s{see}")


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to ``proc`` and, if it leads a process group of its own, to that group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.name == "posix" and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
            return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def kill(proc: subprocess.Popen[bytes] | None) -> int | None:
    """SIGKILL ``proc`` and its process group now (no shutdown handler runs); its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        _kill_group(proc, signal.SIGKILL)
    return proc.wait()


def stop(
    proc: subprocess.Popen[bytes] | None, timeout: float = 30.0, sig: int = signal.SIGTERM
) -> int | None:
    """Stop ``proc`` cleanly: ``sig`` (SIGTERM: the learner checkpoints, the service drains),
    then, after ``timeout`` s, SIGKILL to it and its process group. Its exit code (None: never
    started)."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return kill(proc)


class StopSignals:
    """What :func:`stop_signals` yields: :meth:`begin` says the stop is underway."""

    def __init__(self) -> None:
        self.stopping = False

    def begin(self) -> None:
        """The command is stopping (by a signal or by itself): further SIGTERMs and SIGHUPs are
        ignored, so they cannot cut the stop short."""
        self.stopping = True


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Inside it, SIGTERM and SIGHUP stop the command as Ctrl-C does: a KeyboardInterrupt in the
    main thread. SIGINT is handled the same way, even where it was inherited ignored (a command
    started in the background by a shell), so `kill -INT` stops it too. Once it is stopping (the
    first such signal, or :meth:`StopSignals.begin`), further ones are ignored, so the stop
    completes (robots flush, the learner checkpoints). Outside the main thread signals cannot be
    handled: it changes nothing.

    SIGHUP comes when the terminal went away (a closed SSH session): output to that terminal
    would fail, so stdout and stderr go to /dev/null from then on where they were a terminal.
    """
    state = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            _silence_terminal()
        if state.stopping:
            return
        state.stopping = True
        raise KeyboardInterrupt

    stops = [
        signal.SIGINT,
        signal.SIGTERM,
        *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []),
    ]
    previous = {sig: signal.signal(sig, handler) for sig in stops}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _silence_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal (it hung up)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if os.isatty(fd):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def descendants(pid: int) -> list[int]:
    """The pids of every live process under ``pid`` (children, theirs, ...), from /proc (Linux;
    empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] != "Z":
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    stat = _stat(pid)
    if stat is not None:
        return stat[0] != "Z"
    if Path("/proc").is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
