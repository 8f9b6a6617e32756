"""Flags to the objects the commands run with: the task spec, the settings, the device, the store.

Every check a command's flags need happens here, before the command creates anything (a data
directory, a store, version 0): a bad flag, setting, task or data directory is one line on stderr
and exit status 2 (:func:`~robot_sac.cli.app.refuse`), never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from robot_sac.cli.app import fail, refuse, say_error
from robot_sac.quiet import c_output_silenced

if TYPE_CHECKING:  # imported for real inside the functions, so `robot-sac --help` stays light
    import torch
    from pydantic import BaseModel, ValidationError

    from robot_sac.schemas import TaskSpec
    from robot_sac.settings import Settings
    from robot_sac.store import Store

# Settings whose flag is not the field's name with dashes.
FLAG_OF_SETTING = {"learner_threads": "--threads"}


def problems(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one line, ``where: what`` per problem joined by ``; ``: no input echo,
    no documentation URL. An unknown key of ``model`` (or of a model nested in it) is named as
    such, with the closest known key when one is close."""
    parts = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden" and loc:
            message = "unknown key" + _did_you_mean(loc[-1], _fields_at(model, loc[:-1]))
        where = ".".join(loc)
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _fields_at(model: type[BaseModel] | None, loc: tuple[str, ...]) -> list[str]:
    """The field names of the model at ``loc`` inside ``model`` (e.g. a task's ``sac`` table)."""
    from pydantic import BaseModel

    for part in loc:
        field = None if model is None else model.model_fields.get(part)
        annotation = None if field is None else field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None
    return [] if model is None else list(model.model_fields)


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def task_spec(
    env: str | None, task: Path | None, sac: str | None = None, sac_flag: str = "--sac"
) -> TaskSpec:
    """The task spec from exactly one of --env (a Gymnasium id) or --task (a JSON/TOML file), with
    the SAC settings of ``sac`` (``sac_flag``, a JSON object) over its own."""
    spec = _task_spec(env, task)
    return spec if sac is None else with_sac_overrides(spec, sac, sac_flag)


def with_sac_overrides(spec: TaskSpec, sac: str, flag: str = "--sac") -> TaskSpec:
    """``spec`` with the SAC settings of the JSON object ``sac`` over its own, all re-validated;
    an unknown key is refused, not ignored."""
    import json

    from pydantic import ValidationError

    from robot_sac.config import SACConfig

    try:
        overrides = json.loads(sac)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=flag) from None
    if not isinstance(overrides, dict):
        raise typer.BadParameter("expected a JSON object of SAC settings", param_hint=flag)
    try:
        cfg = SACConfig.model_validate({**spec.sac.model_dump(), **overrides})
    except ValidationError as exc:
        raise typer.BadParameter(problems(exc, SACConfig), param_hint=flag) from None
    return spec.model_copy(update={"sac": cfg})


def _task_spec(env: str | None, task: Path | None) -> TaskSpec:
    from pydantic import ValidationError

    from robot_sac.schemas import TaskSpec

    if (env is None) == (task is None):
        raise typer.BadParameter(
            "give exactly one of --env ID or --task FILE", param_hint="--env/--task"
        )
    if task is not None:
        try:
            return TaskSpec.from_file(task)
        except ValidationError as exc:  # the shapes or a key: which, in one line
            raise typer.BadParameter(
                f"{task}: {problems(exc, TaskSpec)}", param_hint="--task"
            ) from None
        except (OSError, ValueError) as exc:  # unreadable, or not JSON/TOML
            raise typer.BadParameter(f"{task}: {exc}", param_hint="--task") from None
    assert env is not None
    from robot_sac.config import tuned_config
    from robot_sac.sim.envs import make_env, task_spec_from_env

    try:
        with c_output_silenced(1, 2, warnings_too=True):
            probe = make_env(env)
    except Exception as exc:  # gymnasium raises several types for an unknown or broken id
        raise typer.BadParameter(
            f"cannot make Gymnasium env {env!r}: {exc}", param_hint="--env"
        ) from None
    try:
        return task_spec_from_env(probe, name=env, sac=tuned_config(env))
    except ValueError as exc:  # e.g. discrete actions
        raise typer.BadParameter(
            f"{env!r} does not suit SAC, which needs bounded continuous actions: {exc}",
            param_hint="--env",
        ) from None
    finally:
        with c_output_silenced(1, 2, warnings_too=True):
            probe.close()


def settings(**flags: object) -> Settings:
    """Settings from ROBOT_SAC_* variables, with the flags that were given on top; a bad one is
    named as the user gave it (``--max-batch-size`` or ``ROBOT_SAC_MAX_BATCH_SIZE``)."""
    from pydantic import ValidationError

    from robot_sac.settings import Settings

    given = {k: v for k, v in flags.items() if v is not None}
    try:
        base = Settings()
        return Settings.model_validate({**base.model_dump(), **given}) if given else base
    except ValidationError as exc:  # one line, not pydantic's report
        parts = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error.get("loc") else ""
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            if field in given:
                where = FLAG_OF_SETTING.get(field, "--" + field.replace("_", "-"))
            else:
                where = f"ROBOT_SAC_{field.upper()}" if field else ""
            parts.append(f"{where}: {message}" if where else message)
        raise refuse("; ".join(parts)) from None


def device(name: str) -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda or cuda:N) stands for, refused (one line) if it
    is not one of those or this machine has no such device."""
    from robot_sac.devices import resolve_device
    from robot_sac.settings import check_device_name

    try:
        dev = resolve_device(check_device_name(name))
        if dev.type == "cuda" and dev.index is not None:
            import torch

            if dev.index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                    "device(s)"
                )
    except ValueError as exc:
        raise refuse(str(exc)) from None
    return dev


def writable_dir(path: Path, what: str, inside: Iterable[str] = ()) -> None:
    """Refuse (one line) a directory the command would create or write in but cannot: a file, a
    path under a file, or one without write permission (nor the entries ``inside`` it the command
    writes). Nothing is created here."""
    existing = path
    while not os.path.exists(existing) and existing.parent != existing:
        existing = existing.parent
    if not os.path.isdir(existing):
        where = "" if existing == path else f" ({existing} is a file)"
        raise refuse(f"{what} {path} is not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse(f"{what} {path}: no permission to write in {existing}")
    if existing == path:
        for name in inside:
            entry = path / name
            if os.path.lexists(entry) and not os.access(entry, os.W_OK):
                raise refuse(f"{what} {path}: no permission to write {entry}")


# What a SQLite store, a learner, a service and `up` write in a data directory.
DATA_DIR_ENTRIES = (
    "store.sqlite",
    "store.sqlite-wal",
    "store.sqlite-shm",
    "policies",
    "learner",
    "logs",
)


def data_dir(path: Path) -> None:
    """Refuse a data directory the command could not write in, before anything is created."""
    writable_dir(path, "data directory", DATA_DIR_ENTRIES)


def open_store(spec: TaskSpec, settings: Settings, wait_s: float = 60.0) -> Store:
    """The store ``settings`` name, for ``spec``. A store of another task, a schema this version
    cannot read or a bad URL is refused (one line, exit 2; a refused store is left as it was); a
    store that stays busy for ``wait_s`` (another process holds its lock) or cannot be reached
    fails (one line, exit 1)."""
    import time

    from robot_sac.store import StoreBusy, StoreError, StoreUnavailable
    from robot_sac.store import open_store as open_

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_(spec, settings.data_dir, settings.store_url_value)
        except StoreBusy as exc:
            if time.monotonic() > deadline:
                raise fail(str(exc)) from None
            say_error(f"waiting for the store: {exc}")
            time.sleep(0.5)
        except StoreUnavailable as exc:  # down, or not a store: not the command line's fault
            raise fail(str(exc)) from None
        except StoreError as exc:
            raise refuse(str(exc)) from None


def service_url(url: str) -> str:
    """``url`` if it can name a service (http or https, with a host), else refused (one line):
    robots given a malformed one would retry it for ever."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port raises ValueError for a bad one)
    except ValueError as exc:
        raise typer.BadParameter(f"{url!r}: {exc}", param_hint="--url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(
            f"{url!r} is not a service URL: use http://HOST:PORT", param_hint="--url"
        )
    return url


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
