"""The image's Dockerfile, read as Docker reads it (no Docker engine runs on these machines).

A slim service image by default (no simulators, no test or bench tools), its dependencies in a
layer before the code, a non-root user, the data directory as a volume, a healthcheck that
really asks the service's /readyz, ``robot-sac serve`` by default and the learner from the same
image.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from robot_sac.settings import Settings
from tests import dockerfile
from tests.servers import ProcessService, free_port, write_task
from tests.test_fleet_files import compose, parse_cli

ROOT = dockerfile.ROOT
CODE = ("robot_sac", "services", "sim")


def requirements(extras: str) -> list[str]:
    """What docker/requirements.py prints for ``extras``: the image's dependency layer."""
    done = subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", extras],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=;! ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_the_base_is_a_slim_python_by_default_and_a_build_argument():
    base = dockerfile.arg_default("BASE")
    assert base is not None and re.fullmatch(r"python:3\.\d+-slim", base), base
    (from_,) = dockerfile.of("FROM")
    assert from_.text == "${BASE}"
    # ARG BASE comes before FROM (only then can FROM use it)
    order = [i.keyword for i in dockerfile.instructions()]
    assert order.index("ARG") < order.index("FROM")


def test_torch_comes_from_the_cpu_index_unless_the_build_keeps_the_base_images_own():
    assert dockerfile.arg_default("TORCH") == "torch==2.13.0"
    assert dockerfile.arg_default("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    (install,) = [r for r in dockerfile.of("RUN") if "$TORCH" in r.text]
    assert '[ -n "$TORCH" ]' in install.text and '--index-url "$TORCH_INDEX"' in install.text
    # `sh -c` of that line with TORCH empty installs nothing
    line = install.text.replace("pip install", "echo pip install")
    quiet = subprocess.run(
        ["sh", "-c", line], env={"TORCH": "", "PATH": "/usr/bin:/bin"}, capture_output=True
    )
    assert quiet.returncode == 0 and quiet.stdout == b""


def test_the_default_image_serves_and_learns_without_simulators_or_dev_tools():
    extras = dockerfile.arg_default("EXTRAS")
    assert extras is not None
    assert {"service", "learner", "postgres"} <= set(extras.split(","))
    got = names(requirements(extras))
    assert {"fastapi", "uvicorn", "msgspec", "psycopg", "tensorboard", "torch"} <= got
    unwanted = {"pybullet", "gymnasium", "panda-gym", "stable-baselines3", "pytest", "selenium"}
    assert not got & unwanted, got & unwanted


def test_requirements_follow_extras_that_name_extras_and_refuse_unknown_ones():
    every = names(requirements("all"))
    assert {"pybullet", "stable-baselines3", "pytest", "fastapi", "psycopg"} <= every
    done = subprocess.run(
        [sys.executable, "docker/requirements.py", "pyproject.toml", "service,nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "nope" in done.stderr


def test_dependencies_are_installed_before_the_code_is_copied():
    steps = dockerfile.instructions()
    install = next(i for i, s in enumerate(steps) if "requirements.txt" in s.text)
    assert steps[install].keyword == "RUN" and "pip install -r" in steps[install].text
    before = [s for s in steps[:install] if s.keyword in ("COPY", "ADD")]
    copied = {src for s in before for src in s.text.split()[:-1]}
    assert copied == {"pyproject.toml", "docker/requirements.py"}, copied
    after = [s.text.split()[0] for s in steps[install:] if s.keyword == "COPY"]
    assert set(CODE) <= set(after)
    # the code is installed without its dependencies (they are in the layer above)
    assert any("pip install --no-deps ." in s.text for s in steps[install:] if s.keyword == "RUN")


def test_every_copied_path_exists_and_the_build_context_leaves_out_the_rest():
    for copy in dockerfile.of("COPY"):
        for src in copy.text.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    copied = {src for c in dockerfile.of("COPY") for src in c.text.split()[:-1]}
    assert not copied & ignored


def test_the_processes_run_as_a_user_that_is_not_root():
    steps = dockerfile.instructions()
    users = [i for i, s in enumerate(steps) if s.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = steps[users[-1]].text
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    created = [s for s in steps if s.keyword == "RUN" and "useradd" in s.text]
    assert created and user in created[0].text.split()
    # no later step goes back to root, and the data directory belongs to the user
    last_run = max(i for i, s in enumerate(steps) if s.keyword == "RUN")
    assert users[-1] > last_run
    assert f"chown {user} /data" in created[0].text


def test_the_data_directory_is_a_volume_and_the_port_is_exposed():
    env = dockerfile.env_values()
    assert env["ROBOT_SAC_DATA_DIR"] == "/data"
    (volume,) = dockerfile.of("VOLUME")
    assert volume.text in ("/data", '["/data"]')
    (expose,) = dockerfile.of("EXPOSE")
    assert expose.text == env["ROBOT_SAC_PORT"]
    assert env["ROBOT_SAC_HOST"] == "0.0.0.0"
    fields = Settings.model_fields
    assert {"data_dir", "host", "port"} <= set(fields)  # the variables are real settings


def test_serve_is_the_default_command_and_learn_an_alternative():
    (entry,) = dockerfile.of("ENTRYPOINT")
    assert entry.exec_form() == ["robot-sac"]
    (cmd,) = dockerfile.of("CMD")
    command, params = parse_cli(cmd.exec_form())
    assert command == "serve" and params["task"] == Path("/etc/robot_sac/task.json")
    # the header's `learn` example is a real command line
    text = dockerfile.DOCKERFILE.read_text()
    learn = re.search(r"robot-sac (learn [^\n]*)", text)
    assert learn is not None
    command, params = parse_cli(learn[1].split())
    assert command == "learn" and params["progress"] is False


def test_the_healthcheck_asks_the_services_readyz(tmp_path: Path):
    """The healthcheck's own command, run against a real service (on a free port, not 8000)."""
    (health,) = dockerfile.of("HEALTHCHECK")
    argv = health.exec_form()
    assert argv[:2] == ["python", "-c"]
    port = dockerfile.env_values()["ROBOT_SAC_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in argv[2]
    service = ProcessService(tmp_path / "data", write_task(tmp_path / "task.json")).start()
    try:
        live = argv[2].replace(f":{port}/", f":{service.port}/")
        ok = subprocess.run([sys.executable, "-c", live], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        service.terminate()
    down = argv[2].replace(f":{port}/", f":{free_port()}/")
    refused = subprocess.run([sys.executable, "-c", down], capture_output=True, timeout=30)
    assert refused.returncode != 0


@pytest.mark.parametrize("name", ["replica1", "replica2", "learner"])
def test_the_fleet_builds_the_image_with_the_simulators_it_serves(name: str):
    build = compose()["services"][name]["build"]
    extras = set(build["args"]["EXTRAS"].split(","))
    assert {"service", "learner", "postgres", "sim"} <= extras
    requirements(",".join(sorted(extras)))  # every one of them is an extra of the project
