"""A bad command line is one line and exit 2, said before anything is created (issue 18.3).

Each command runs as a user runs it, in a subprocess in a fresh directory: an unknown or
discrete env, a bad setting, log level or device, a data directory that is a file, that cannot be
written or that holds another task's store, a task file with wrong shapes or unknown SAC keys.
Then: what `learn` says while it waits for data, and `sim` printing only what changed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robot_sac.config import SACConfig
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.store import open_existing, open_store
from tests.servers import (
    ProcessService,
    StoreLock,
    ThreadService,
    start_thread_service,
    write_task,
)

ARM = TaskSpec(
    name="arm",
    obs_dim=3,
    action_low=(-1.0,),
    action_high=(1.0,),
    sac=SACConfig(hidden=(16, 16), batch_size=16, learning_starts=20),
)
# Another task: the data directory of one is refused to the other.
GRIPPER = TaskSpec(name="gripper", obs_dim=5, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: sim must refuse before it tries it


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ROBOT_SAC_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOT_SAC_")}
    return {**env, **extra}


def robot_sac(
    cwd: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "robot_sac.cli", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """A usage or configuration error as the user sees it: exit 2, nothing on stdout, one line on
    stderr, no traceback, no pydantic report or documentation URL."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert line.startswith("robot-sac: "), line
    for noise in ("Traceback", "https://", "validation error", "input_value", "Value error"):
        assert noise not in line, line
    return line


def tree(path: Path) -> list[str]:
    """Every path under ``path`` but SQLite's transient -wal/-shm files."""
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if not p.name.endswith(("-wal", "-shm"))
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with the task files the cases use."""
    write_task(tmp_path / "arm.json", ARM)
    (tmp_path / "wrong-shapes.json").write_text(
        json.dumps({"obs_dim": 3, "action_low": [-1.0], "action_high": [1.0, 1.0]})
    )
    (tmp_path / "typo.toml").write_text(
        "obs_dim = 3\naction_low = [-1.0]\naction_high = [1.0]\n[sac]\ngama = 0.9\n"
    )
    (tmp_path / "a-file").write_text("not a directory\n")
    return tmp_path


PENDULUM = ("--env", "Pendulum-v1")
DATA = ("--data-dir", "data")

# (command line, environment, words the one line must hold)
CASES = {
    "train-local an unknown env": (
        ("train-local", "--env", "Nope-v0", "--steps", "10", "--out", "data"),
        {},
        ["--env", "'Nope-v0'", "doesn't exist"],
    ),
    "sim an unknown env": (
        ("sim", "--env", "Nope-v0", "--steps", "10", "--url", UNREACHABLE),
        {},
        ["--env", "'Nope-v0'"],
    ),
    "sim a malformed service URL": (
        ("sim", *PENDULUM, "--steps", "10", "--url", "localhost:8000"),
        {},
        ["--url", "'localhost:8000' is not a service URL"],
    ),
    "serve discrete actions": (
        ("serve", "--env", "CartPole-v1", *DATA),
        {},
        ["'CartPole-v1'", "continuous actions", "Discrete(2)"],
    ),
    "serve --max-batch-size 0": (
        ("serve", "--task", "arm.json", *DATA, "--max-batch-size", "0"),
        {},
        ["--max-batch-size", "greater than or equal to 1"],
    ),
    "serve --log-level loud": (
        ("serve", "--task", "arm.json", *DATA, "--log-level", "loud"),
        {},
        ["--log-level", "'loud'", "'debug', 'info', 'warning', 'error'"],
    ),
    "learn --device tpu": (
        ("learn", "--task", "arm.json", *DATA, "--device", "tpu"),
        {},
        ["--device", "'tpu'", "auto, cpu, cuda or cuda:N"],
    ),
    "learn ROBOT_SAC_DEVICE=tpu": (
        ("learn", "--task", "arm.json", *DATA),
        {"ROBOT_SAC_DEVICE": "tpu"},
        ["ROBOT_SAC_DEVICE", "'tpu'"],
    ),
    "learn a device this machine lacks": (
        ("learn", "--task", "arm.json", *DATA, "--device", "cuda:99"),
        {},
        ["'cuda:99'"],
    ),
    "serve a data directory that is a file": (
        ("serve", "--task", "arm.json", "--data-dir", "a-file"),
        {},
        ["data directory a-file is not a directory"],
    ),
    "learn a data directory under a file": (
        ("learn", "--task", "arm.json", "--data-dir", "a-file/data"),
        {},
        ["a-file/data is not a directory (a-file is a file)"],
    ),
    "serve a task file with wrong shapes": (
        ("serve", "--task", "wrong-shapes.json", *DATA),
        {},
        ["--task", "wrong-shapes.json", "action_low has 1 entries but action_high has 2"],
    ),
    "learn a task file with an unknown SAC key": (
        ("learn", "--task", "typo.toml", *DATA),
        {},
        ["typo.toml", "sac.gama: unknown key (did you mean 'gamma'?)"],
    ),
    "learn --sac with an unknown key": (
        ("learn", "--task", "arm.json", *DATA, "--sac", '{"lrr": 0.01}'),
        {},
        ["--sac", "lrr: unknown key (did you mean 'lr'?)"],
    ),
    "train-local --config with an unknown key": (
        ("train-local", "--steps", "10", "--out", "data", "--config", '{"lrr": 0.01}'),
        {},
        ["--config", "lrr: unknown key (did you mean 'lr'?)"],
    ),
    "serve on all interfaces without tokens": (
        ("serve", "--task", "arm.json", *DATA, "--host", "0.0.0.0"),
        {},
        ["refusing to serve on 0.0.0.0 without tokens"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_command_is_one_line_exit_2_and_creates_nothing(work: Path, case: str) -> None:
    args, env, words = CASES[case]
    line = refused(robot_sac(work, *args, env=clean_env(**env)))
    for word in words:
        assert word in line, line
    assert not (work / "data").exists()  # no store, no version 0, no results folder
    assert (work / "a-file").read_text() == "not a directory\n"


@pytest.mark.parametrize("command", ["serve", "learn", "up"])
def test_a_data_directory_of_another_task_is_refused_and_left_as_it_was(
    work: Path, command: str
) -> None:
    data = work / "data"
    open_store(GRIPPER, data).close()
    before = tree(data)
    if command == "up":  # `up` runs an env: the reach task's store is refused the same way
        args = ("up", "--steps", "10", "--data-dir", "data")
    else:
        args = (command, "--task", "arm.json", "--data-dir", "data")
    line = refused(robot_sac(work, *args))
    assert "data holds data of another task (obs_dim 5" in line, line
    assert tree(data) == before
    store = open_existing(data)
    try:
        assert store.spec.obs_dim == GRIPPER.obs_dim
        assert store.list_policies() == [] and store.transition_count() == 0
    finally:
        store.close()


def test_serve_waits_for_a_store_another_process_holds_at_start(work: Path) -> None:
    """serve opens the store before it starts the service (to refuse another task's): a store
    that is only busy is waited for, as the service's own start-up does, not refused."""
    data = work / "data"
    open_store(ARM, data).close()
    lock = StoreLock(data / "store.sqlite")
    releaser = threading.Timer(2.0, lock.release)
    releaser.start()
    svc = ProcessService(data, work / "arm.json")
    try:
        svc.start(timeout=120)  # ready once the lock is gone
    finally:
        releaser.join()
        svc.terminate()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user may enter (pytest's own is its owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="robot-sac-errors-"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        p.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("command", ["serve", "learn"])
def test_a_data_directory_without_write_permission_is_refused(
    shared_dir: Path, command: str
) -> None:
    """Run by a user who may not write in ``locked``: root may write anywhere, so as root the
    command runs as nobody (uid 65534, through util-linux's setpriv)."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root may write anywhere, and there is no setpriv to run as nobody")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    write_task(shared_dir / "arm.json", ARM).chmod(0o644)
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    for data in ("locked", "locked/data"):
        args = (command, "--task", "arm.json", "--data-dir", data)
        done = robot_sac(shared_dir, *args, prefix=prefix)
        line = refused(done)
        assert f"data directory {data}: no permission to write in locked" in line, line
    assert list(locked.iterdir()) == []


def test_learn_on_an_empty_store_says_it_waits_for_transitions_and_where(work: Path) -> None:
    args = ("learn", "--task", "arm.json", *DATA, "--threads", "1", "--no-progress")
    learner = subprocess.Popen(
        [sys.executable, "-m", "robot_sac.cli", *args],
        cwd=work,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert learner.stdout is not None
    lines: queue.Queue[str] = queue.Queue()  # what it prints, as it prints it
    reader = threading.Thread(target=lambda: [lines.put(line) for line in learner.stdout or ()])
    reader.start()
    try:
        first = lines.get(timeout=120)  # it says something while it waits, and says it first
        assert first.startswith(f"waiting for transitions in {Path('data', 'store.sqlite')}: ")
        assert "none logged yet" in first and "robot-sac serve" in first
        time.sleep(3.0)  # still waiting: it says nothing more
        assert learner.poll() is None and lines.empty()
    finally:
        learner.terminate()
        learner.wait(timeout=120)
        reader.join(timeout=30)
    assert learner.returncode == 0
    rest = list(lines.queue)
    assert len(rest) == 1 and rest[0].startswith("learner stopped at 0 updates"), rest


def test_learn_says_how_many_transitions_it_waits_for(work: Path) -> None:
    store = open_store(ARM, work / "data")
    try:
        store.append(
            [
                Transition(
                    robot_id="r",
                    episode_id="e",
                    step=k,
                    obs=[0.0, 0.0, 0.1 * k],
                    action=[0.0],
                    reward=0.0,
                    next_obs=[0.0, 0.0, 0.1 * k + 0.1],
                    terminated=False,
                    truncated=False,
                )
                for k in range(5)
            ]
        )
    finally:
        store.close()
    args = ("learn", "--task", "arm.json", *DATA, "--threads", "1", "--no-progress")
    done = robot_sac(work, *args, "--max-updates", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    said = r"waiting for transitions in \S+: 5 logged, learning starts at 20"
    assert re.search(said, done.stdout), done.stdout


@pytest.fixture
def pendulum_service(tmp_path: Path) -> Iterator[ThreadService]:
    from robot_sac.sim.envs import task_spec

    svc = start_thread_service(tmp_path / "data", task_spec("Pendulum-v1"))
    yield svc
    svc.stop()


def test_sim_prints_its_summary_only_when_it_changed(pendulum_service: ThreadService) -> None:
    """One robot at 30 Hz for 399 steps: its one 200-step episode ends after about 7 s, then
    nothing ends for about 7 s more, longer than sim's 5 s between looks: the summary is the
    same at every look after the episode, and printed once."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "robot_sac.cli", "sim", *PENDULUM),
            *("--url", pendulum_service.url, "--robots", "1", "--steps", "399", "--rate-hz", "30"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if "version 0:" in line]
    assert len(summaries) == 1, done.stdout
    assert "1 episodes" in summaries[0]
