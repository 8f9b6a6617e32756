"""The dependency rules of the architecture, checked in fresh interpreters.

The core imports no web framework, simulator or Gymnasium; a robot's computer needs no torch for
the schemas and the client (which needs no numpy or pydantic either); the CLI reaches services
and sim only inside its commands.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import robot_sac

HEAVY = {"fastapi", "uvicorn", "starlette", "pybullet", "gymnasium", "panda_gym"}


def core_modules() -> list[str]:
    """Every module of the core, those of its packages (robot_sac.cli, robot_sac.store) too."""
    names = ["robot_sac"]
    for info in pkgutil.walk_packages(robot_sac.__path__, "robot_sac."):
        if not info.name.startswith(("robot_sac.services", "robot_sac.sim")):
            names.append(info.name)
    return names


def loaded_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in json.loads(out.stdout)} | set(json.loads(out.stdout))


def test_core_modules_are_found():
    mods = core_modules()
    for expected in (
        "robot_sac.distributions",
        "robot_sac.sac",
        "robot_sac.policy",
        "robot_sac.cli",
        "robot_sac.cli.operate",
    ):
        assert expected in mods


def test_core_imports_no_web_framework_simulator_or_gymnasium():
    for module in core_modules():
        heavy = loaded_after_import(module) & HEAVY
        assert not heavy, f"{module} imports {sorted(heavy)}"


def test_cli_does_not_import_services_or_sim_at_import_time():
    loaded = loaded_after_import("robot_sac.cli")
    assert not any(m.startswith(("robot_sac.services", "robot_sac.sim")) for m in loaded)


def test_robot_side_modules_import_no_torch():
    for module in ("robot_sac.schemas", "robot_sac.config", "robot_sac.client"):
        loaded = loaded_after_import(module)
        assert "torch" not in loaded, f"{module} imports torch"


def test_the_robot_client_needs_only_httpx_and_msgspec():
    loaded = loaded_after_import("robot_sac.client")
    assert not loaded & {"numpy", "pydantic", "torch"}, sorted(loaded & {"numpy", "pydantic"})
    assert {"httpx", "msgspec"} <= loaded


def test_sim_uses_only_schemas_of_the_core():
    loaded = loaded_after_import("robot_sac.sim.envs")
    core = {m for m in loaded if m.startswith("robot_sac.") and not m.startswith("robot_sac.sim")}
    assert core <= {"robot_sac.schemas", "robot_sac.config", "robot_sac.client"}, core
    assert "torch" not in loaded
