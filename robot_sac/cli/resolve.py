"""Flags to the objects the commands run with: the task spec and the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported for real inside the functions, so `robot-sac --help` stays light
    from robot_sac.schemas import TaskSpec
    from robot_sac.settings import Settings


def task_spec(env: str | None, task: Path | None, sac: str | None = None) -> TaskSpec:
    """The task spec from exactly one of --env (a Gymnasium id) or --task (a JSON/TOML file), with
    the SAC settings of ``sac`` (--sac, a JSON object) over its own."""
    spec = _task_spec(env, task)
    return spec if sac is None else with_sac_overrides(spec, sac)


def with_sac_overrides(spec: TaskSpec, sac: str) -> TaskSpec:
    """``spec`` with the SAC settings of the JSON object ``sac`` over its own, all re-validated."""
    import json

    from pydantic import ValidationError

    from robot_sac.config import SACConfig

    try:
        overrides = json.loads(sac)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--sac") from exc
    if not isinstance(overrides, dict):
        raise typer.BadParameter("expected a JSON object of SAC settings", param_hint="--sac")
    try:
        cfg = SACConfig.model_validate({**spec.sac.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'sac'}: "
            + str(e.get("msg", "invalid")).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise typer.BadParameter(problems, param_hint="--sac") from None
    return spec.model_copy(update={"sac": cfg})


def _task_spec(env: str | None, task: Path | None) -> TaskSpec:
    from robot_sac.schemas import TaskSpec

    if (env is None) == (task is None):
        raise typer.BadParameter(
            "give exactly one of --env ID or --task FILE", param_hint="--env/--task"
        )
    if task is not None:
        try:
            return TaskSpec.from_file(task)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{task}: {exc}", param_hint="--task") from exc
    assert env is not None
    from robot_sac.config import tuned_config
    from robot_sac.sim.envs import make_env, task_spec_from_env

    try:
        probe = make_env(env)
    except Exception as exc:  # gymnasium raises several types for an unknown or broken id
        raise typer.BadParameter(
            f"cannot make Gymnasium env {env!r}: {exc}", param_hint="--env"
        ) from exc
    try:
        return task_spec_from_env(probe, name=env, sac=tuned_config(env))
    finally:
        probe.close()


def settings(**flags: object) -> Settings:
    """Settings from ROBOT_SAC_* variables, with the flags that were given on top."""
    from pydantic import ValidationError

    from robot_sac.settings import Settings

    try:
        base = Settings()
        given = {k: v for k, v in flags.items() if v is not None}
        return Settings.model_validate({**base.model_dump(), **given}) if given else base
    except ValidationError as exc:  # one line per problem, not pydantic's report
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            typer.echo(f"error: {where + ': ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
