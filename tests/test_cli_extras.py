"""Which extra each command needs (robot_sac.cli.extras) agrees with the app and pyproject.toml,
and a missing extra is one line, in fresh interpreters where a package is made unimportable
(`tests/test_light_install.py` checks the same in real installs without them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from robot_sac.cli import app
from robot_sac.cli.extras import COMMAND_EXTRAS, EXTRA_MODULES, OPERATOR_COMMANDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # a core dependency before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_command_of_the_app_says_which_extras_it_needs():
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    missing = commands - set(COMMAND_EXTRAS)
    assert not missing, f"add {sorted(missing)} to robot_sac.cli.extras.COMMAND_EXTRAS"
    assert set(OPERATOR_COMMANDS) <= commands


def test_the_extras_named_are_pyprojects_and_all_covers_every_one():
    named = {e for extras in COMMAND_EXTRAS.values() for e in extras}
    named |= {e for extras in EXTRA_MODULES.values() for e in extras}
    assert named <= set(EXTRAS), named - set(EXTRAS)
    (everything,) = EXTRAS["all"]
    covered = set(everything.removeprefix("robot-sac[").removesuffix("]").split(","))
    # `cli` comes with service, learner and sim; every other extra is in `all` by name.
    assert covered == set(EXTRAS) - {"all", "cli"}
    for extra in ("service", "learner", "sim"):
        assert "robot-sac[cli]" in EXTRAS[extra]


def test_the_core_is_the_robots_computer_and_the_extras_hold_the_rest():
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split(";")[0].strip() for d in core}
    assert names == {"httpx", "msgspec", "pydantic", "tomli"}
    assert any(d.startswith("tensorboard") for d in EXTRAS["learner"])
    assert any(d.startswith("matplotlib") for d in EXTRAS["learner"])  # robot-sac plot
    assert not any(d.startswith(("tensorboard", "matplotlib")) for d in EXTRAS["service"])


def run_without(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``robot-sac ARGS`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv[0] = 'robot-sac'\n"
        "from robot_sac.cli import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_a_command_missing_its_extra_says_which_in_one_line(tmp_path: Path):
    done = run_without("fastapi", "serve", "--env", "Pendulum-v1", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        'robot-sac: serve needs the "service" extra: pip install "robot-sac[service]"'
    ]
    # serve --env derives the task from gymnasium: the simulators' extra, beside the service's
    done = run_without("gymnasium", "serve", "--env", "Pendulum-v1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'robot-sac: serve needs the "service" and "sim" extras: '
        'pip install "robot-sac[service,sim]"'
    ]
    done = run_without("matplotlib", "plot", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'robot-sac: plot needs the "learner" extra: pip install "robot-sac[learner]"'
    ]
    # learn and up without torch: refused before they create their data directory
    for command in ("learn", "up"):
        done = run_without("torch", command, "--env", "Pendulum-v1", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[0].startswith(f"robot-sac: {command} needs the ")
    assert not (tmp_path / "data").exists()  # nothing ran


def test_without_typer_every_command_answers_with_its_extra(tmp_path: Path):
    done = run_without("typer", "learn", "--help", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        'robot-sac: learn needs the "learner" extra: pip install "robot-sac[learner]"'
    ]
    done = run_without("typer", "pin", "3", cwd=tmp_path)
    assert done.stderr.splitlines() == [
        'robot-sac: pin needs the "cli" extra: pip install "robot-sac[cli]"'
    ]
    done = run_without("typer", "nonsense", cwd=tmp_path)
    assert done.returncode == 2 and "no such command 'nonsense'" in done.stderr
    done = run_without("typer", "--help", cwd=tmp_path)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    for command in COMMAND_EXTRAS:
        assert any(command in line and "pip install" in line for line in lines), command
    assert run_without("typer", cwd=tmp_path).returncode == 2  # no command: the help, exit 2


def test_a_missing_module_of_no_extra_keeps_its_traceback(tmp_path: Path):
    code = (
        "from robot_sac.cli.extras import guarded\n"
        "def broken(): import robot_sac_no_such_module\n"
        "guarded(broken, ['serve'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "robot_sac_no_such_module" in done.stderr
