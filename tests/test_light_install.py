"""`pip install robot-sac` is the robot's computer: in a fresh virtualenv, the package without
extras brings the client and the wire schemas and no torch or numpy, the client acts and logs
against a real service, and `robot-sac` says in one line which extra a command needs; with the
`cli` extra the operator's commands work, still without torch.

The wheel is built once from a copy of the tree (as a clean clone has it); the fresh venvs fetch
only the light dependencies from the package index. Without an index the tests fail, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from robot_sac.store import open_existing
from tests.servers import ProcessService, write_task

pytestmark = pytest.mark.slow  # two virtualenvs filled from the package index: a minute or so

ROOT = Path(__file__).resolve().parent.parent
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "data"
)
# What the light install must not bring: torch and numpy above all, and the extras' packages.
HEAVY = ("torch", "numpy", "typer", "rich", "fastapi", "uvicorn", "pydantic_settings", "gymnasium")


def fresh_env() -> dict[str, str]:
    """This process's environment without what would let a venv see this checkout or venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("wheel")
    clone = where / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip_wheel, "--quiet", "--wheel-dir", str(where), str(clone)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = where.glob("robot_sac-*.whl")
    return built


def make_venv(where: Path, requirement: str) -> Path:
    """A fresh virtualenv at ``where`` with ``requirement`` installed; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", requirement],
        capture_output=True,
        text=True,
        timeout=900,
        env=fresh_env(),
        cwd=where,
    )
    if done.returncode != 0:
        pytest.fail(
            f"pip could not install {requirement} into a fresh venv (is the package index "
            f"reachable?): {done.stderr.strip()[-1500:]}"
        )
    return python


def run_in(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd outside the checkout: python -c puts the working directory first on sys.path.
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=120, env=fresh_env(), cwd=cwd
    )


def importable(python: Path, names: tuple[str, ...], cwd: Path) -> list[str]:
    code = (
        "import importlib.util as u, sys\n"
        "print(' '.join(n for n in sys.argv[1:] if u.find_spec(n)))"
    )
    done = run_in(python, "-c", code, *names, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessService]:
    where = tmp_path_factory.mktemp("service")
    svc = ProcessService(where / "data", write_task(where / "task.json")).start(timeout=120)
    try:
        yield svc
    finally:
        svc.kill()


# The robot's program, run by the light venv's python: act, log three steps, flush.
ROBOT = """
import json, sys
from robot_sac.client import RobotClient
from robot_sac.schemas import TaskSpec

url = sys.argv[1]
with RobotClient(url, robot_id="light-arm") as robot:
    obs = [0.25] * 17
    action, version, hold = robot.act(obs)
    for step in range(3):
        robot.log("light-episode", step, obs, action, 0.5 * step, obs, terminated=False,
                  truncated=step == 2, policy_version=version)
    robot.flush(timeout_s=60)
    sent = robot.sent
spec = TaskSpec(name="arm", obs_dim=17, action_low=(-1.0,) * 6, action_high=(1.0,) * 6)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "numpy", "typer", "rich"})
print(json.dumps({"action": action, "version": version, "hold": hold, "sent": sent,
                  "safe_action": list(spec.safe_action), "heavy": heavy}))
"""


def test_the_robot_install_has_no_torch_and_its_client_logs_to_a_real_service(
    wheel: Path, service: ProcessService, tmp_path: Path
):
    python = make_venv(tmp_path / "venv", str(wheel))
    assert importable(python, HEAVY, tmp_path) == []
    assert importable(python, ("httpx", "msgspec", "pydantic"), tmp_path) == [
        "httpx",
        "msgspec",
        "pydantic",
    ]

    done = run_in(python, "-c", ROBOT, service.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert answer["heavy"] == [] and answer["sent"] == 3
    assert answer["version"] == 0 and answer["hold"] is False
    assert len(answer["action"]) == 6 and all(-1.0 <= a <= 1.0 for a in answer["action"])
    assert answer["safe_action"] == [0.0] * 6

    # The service stored the three transitions, as the robot sent them.
    store = open_existing(service.data_dir)
    try:
        rows = store.read_after(0, 100)
    finally:
        store.close()
    assert len(rows) == 3
    np.testing.assert_array_equal(rows.obs, np.full((3, 17), 0.25, np.float32))
    np.testing.assert_array_equal(rows.action, np.array([answer["action"]] * 3, np.float32))
    np.testing.assert_array_equal(rows.reward, np.array([0.0, 0.5, 1.0], np.float32))
    assert rows.truncated.tolist() == [False, False, True]
    assert rows.policy_version.tolist() == [0, 0, 0]

    # The console script: one line naming the extra, exit 2, no traceback.
    robot_sac = python.parent / "robot-sac"
    done = run_in(robot_sac, "serve", "--env", "Pendulum-v1", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        'robot-sac: serve needs the "service" extra: pip install "robot-sac[service]"'
    ]
    done = run_in(robot_sac, "status", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'robot-sac: status needs the "cli" extra: pip install "robot-sac[cli]"'
    ]
    done = run_in(robot_sac, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'pip install "robot-sac[service,learner,sim]"  up' in done.stdout
    done = run_in(robot_sac, "--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "robot-sac 0.1.0"


def test_the_cli_extra_runs_the_operator_commands_without_torch(
    wheel: Path, service: ProcessService, tmp_path: Path
):
    python = make_venv(tmp_path / "venv", f"{wheel}[cli]")
    assert importable(python, HEAVY, tmp_path) == ["typer", "rich"]
    robot_sac = python.parent / "robot-sac"

    done = run_in(robot_sac, "status", "--url", service.url, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["served_version"] == 0

    # serve's module needs what the service extra brings: the command stops on the import of a
    # package that is not there, and says which extra in one line.
    done = run_in(robot_sac, "serve", "--env", "Pendulum-v1", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        'robot-sac: serve needs the "service" extra: pip install "robot-sac[service]"'
    ]
    done = run_in(robot_sac, "up", "--steps", "10", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        'robot-sac: up needs the "service", "learner" and "sim" extras: '
        'pip install "robot-sac[service,learner,sim]"'
    ]
