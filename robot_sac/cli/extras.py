"""Which extra each ``robot-sac`` command needs, and the one line it says when that is missing.

``pip install robot-sac`` is the robot's computer: the client and the wire schemas, without the
command line's typer and rich, torch, the service or the simulators (pyproject.toml's extras
bring those). This module imports only the standard library, so that the console script works
there too: :func:`light_main` answers every command with the extra it needs, and
:func:`guarded` turns a command that stops on a missing dependency of an extra (an install with
the ``cli`` extra running ``serve``, say) into the same one line instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence

from robot_sac import __version__

OPERATOR_COMMANDS = (
    "status",
    "robots",
    "policies",
    "pin",
    "follow",
    "hold",
    "release",
    "pause",
    "resume",
    "upload",
)
# Every command of the app and the extras it needs, in the help's order (a test checks that
# each registered command is here, and that each extra named is one of pyproject.toml's).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("service",),
    "learn": ("learner",),
    "sim": ("sim",),
    "up": ("service", "learner", "sim"),
    "eval": ("learner", "sim"),
    "export-onnx": ("learner", "export"),
    **dict.fromkeys(OPERATOR_COMMANDS, ("cli",)),
    "plot": ("learner",),
    "train-local": ("learner", "sim"),
}
# What `import robot_sac.cli` needs: the `cli` extra.
CLI_MODULES = ("typer", "rich")
# The import names the extras bring, and the extras that bring each. A command that stops on
# one of these lacks an extra; any other missing module is a bug, whose traceback is kept.
TORCH_EXTRAS = ("service", "learner")
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("typer", "rich", "click"), ("cli",)),
    **dict.fromkeys(("torch", "safetensors", "pydantic_settings"), TORCH_EXTRAS),
    "numpy": (*TORCH_EXTRAS, "sim"),
    **dict.fromkeys(("fastapi", "starlette", "uvicorn", "prometheus_client"), ("service",)),
    **dict.fromkeys(("tensorboard", "matplotlib"), ("learner",)),
    **dict.fromkeys(("gymnasium", "pybullet", "pybullet_envs_gymnasium", "panda_gym"), ("sim",)),
    **dict.fromkeys(("psycopg", "psycopg_pool"), ("postgres",)),
    **dict.fromkeys(("onnx", "onnxruntime"), ("export",)),
    **dict.fromkeys(("imageio", "imageio_ffmpeg"), ("video",)),
}


# What a command that creates a data directory or a store imports first: checked before it
# creates anything, so a missing extra leaves nothing behind.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "serve": ("torch", "safetensors", "fastapi", "uvicorn"),
    "learn": ("torch", "safetensors"),
    "up": ("torch", "safetensors", "fastapi", "uvicorn", "gymnasium"),
}


def require(command: str) -> None:
    """Raise :class:`ModuleNotFoundError` for the first module ``command`` needs that is not
    installed (:func:`guarded` turns it into the one line naming the extra)."""
    for name in COMMAND_MODULES.get(command, ()):
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def cli_installed() -> bool:
    """Whether the command line's own dependencies (the ``cli`` extra) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in CLI_MODULES)


def needs(command: str, extras: Sequence[str]) -> str:
    """``serve needs the "service" extra: pip install "robot-sac[service]"``."""
    quoted = [f'"{extra}"' for extra in extras]
    names = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    noun = "extra" if len(extras) == 1 else "extras"
    return f'{command} needs the {names} {noun}: pip install "robot-sac[{",".join(extras)}]"'


def command_of(argv: Sequence[str]) -> str | None:
    """The command in ``argv`` (the arguments after the program): the first that is not an
    option (the app's own options, --help and --version, take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def say(message: str) -> None:
    """One line on stderr, as the CLI's ``fail()`` prints it."""
    print(f"robot-sac: {message}", file=sys.stderr)


def light_help() -> str:
    # The operator's commands first: the lightest extra, and the one a robot's computer may want.
    by_extras: dict[tuple[str, ...], list[str]] = {("cli",): []}
    for command, extras in COMMAND_EXTRAS.items():
        by_extras.setdefault(extras, []).append(command)
    rows = [(f'pip install "robot-sac[{",".join(e)}]"', ", ".join(c)) for e, c in by_extras.items()]
    rows.append(('pip install "robot-sac[all]"', "all of them, the tests and benchmarks too"))
    width = max(len(install) for install, _ in rows)
    return "\n".join(
        [
            "Usage: robot-sac COMMAND [ARGS]...",
            "",
            "This install is the robot's: the client (robot_sac.client) and the wire schemas.",
            "The commands come with the extras:",
            *(f"  {install:<{width}}  {commands}" for install, commands in rows),
        ]
    )


def light_main(argv: Sequence[str] | None = None) -> None:
    """The console script without the ``cli`` extra: every command says, in one line on stderr,
    which extra it needs (exit 2); ``--help`` lists them, ``--version`` prints the version."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = command_of(args)
    if command is None:
        if "--version" in args:
            print(f"robot-sac {__version__}")
            sys.exit(0)
        print(light_help())
        sys.exit(0 if {"--help", "-h"} & set(args) else 2)
    if command in COMMAND_EXTRAS:
        say(needs(command, COMMAND_EXTRAS[command]))
    else:
        say(f"no such command '{command}' (robot-sac --help lists the commands and their extras)")
    sys.exit(2)


def missing_extra(exc: ModuleNotFoundError, argv: Sequence[str]) -> str | None:
    """The one line for a command that stopped on ``exc``, or None when the missing module is
    no extra's (a bug: its traceback must show).

    It names the command's extras, and the module's own where none of those brings it (`serve
    --env` needs the simulators' gymnasium, a PostgreSQL store needs psycopg)."""
    providers = EXTRA_MODULES.get((exc.name or "").split(".")[0])
    if providers is None:
        return None
    command = command_of(argv) or "robot-sac"
    extras = COMMAND_EXTRAS.get(command, ())
    if not set(providers) & set(extras):
        extras = (*extras, providers[0])
    return needs(command, extras)


def guarded(main: Callable[[], None], argv: Sequence[str] | None = None) -> None:
    """Run the app's ``main``; a command that stops on a missing extra says so in one line."""
    try:
        main()
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, sys.argv[1:] if argv is None else argv)
        if message is None:
            raise
        say(message)
        sys.exit(2)
