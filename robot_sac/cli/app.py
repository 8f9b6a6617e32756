"""The ``robot-sac`` typer app, the options several commands share, and :func:`main`.

The commands live in the sibling modules and register themselves on :data:`app` when
``robot_sac.cli`` is imported. Every module of this package imports only typer and the standard
library at import time; torch, the services and the simulators are imported inside the commands
that need them, so ``robot-sac --help`` and the operator commands start fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from robot_sac import __version__

# The task `up` and `sim` run when none is given: it learns in minutes on a laptop CPU.
DEFAULT_ENV = "PandaReachDense-v3"
# The port `serve` binds by default (Settings.port; a test keeps the two equal), so the
# operator commands and `sim` reach a default service without flags.
DEFAULT_PORT = 8000
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

# Help panels: `robot-sac --help` groups the commands by what the user is doing.
RUN_PANEL = "Run the loop"
OPERATE_PANEL = "Operate a running service (--url, --token)"
TOOLS_PANEL = "Tools"

app = typer.Typer(
    help="robot_sac: Soft Actor-Critic for robots that learn while they work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Options several commands share.
EnvOption = Annotated[str | None, typer.Option(help="Gymnasium env id of the task.")]
TaskOption = Annotated[
    Path | None, typer.Option(help="Task file (JSON or TOML) describing a real robot.")
]
DataDirOption = Annotated[Path | None, typer.Option(help="Data directory (ROBOT_SAC_DATA_DIR).")]
StoreUrlOption = Annotated[str | None, typer.Option(help="postgresql://... (ROBOT_SAC_STORE_URL).")]


DEVICE_METAVAR = "<auto|cpu|cuda|cuda:N>"


def parse_device(value: str) -> str:
    """A --device value, refused at parse time (a usage error) unless it is one of the choices."""
    from robot_sac.settings import check_device_name

    try:
        return check_device_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


DeviceOption = Annotated[
    str | None,
    typer.Option(
        parser=parse_device, metavar=DEVICE_METAVAR, help="Torch device (ROBOT_SAC_DEVICE)."
    ),
]


class LogLevel(str, Enum):
    """The --log-level choices: Python's logging levels a user may want."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


LogLevelOption = Annotated[LogLevel, typer.Option(case_sensitive=False, help="How much to log.")]
# A scripted expert standing in for a teleoperator (the Panda reach and push tasks have one);
# the rule's figures are robot_sac.sim.robot.InterventionRule's defaults.
DemosOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Demonstrations first: the scripted expert drives this many episodes in all, shared "
        "between the robots as evenly as they go, logged with source 'demo'; the policy acts "
        "after them. Their steps count in --steps. Panda reach and push tasks only. With "
        "--demos or --intervene, `up` draws half of each batch from the expert's rows "
        "(--sac with a prior_share to choose).",
    ),
]
InterveneOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Chance per policy episode that the scripted expert watches it and, once it "
        "struggles (10 steps without getting 5 mm closer to the goal), takes over for 20 steps "
        "(or to the episode's end), once an episode; its steps are logged with source 'human'. "
        "A held robot stays held: it applies the safe action whatever the expert wants.",
    ),
]
SacOption = Annotated[
    str | None,
    typer.Option(
        help="SAC settings as a JSON object over the task's (an env's tuned ones, a task file's "
        'sac table), e.g. \'{"prior_share": 0.5, "critic_layer_norm": true}\'; the learner '
        "uses them."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"robot-sac {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """robot_sac: Soft Actor-Critic for robots that learn while they work."""


# The exit status of a usage or configuration error (a bad flag, setting, task or data directory),
# as click gives its own usage errors; a failure at run time exits 1.
USAGE_ERROR = 2


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``robot-sac: <message>`` as one line on stderr; the caller raises what this returns."""
    say_error(message)
    return typer.Exit(code)


def refuse(message: str) -> typer.Exit:
    """:func:`fail` for a usage or configuration error: one line, exit :data:`USAGE_ERROR`. Said
    before the command creates anything."""
    return fail(message, USAGE_ERROR)


def say_error(message: str) -> None:
    """``robot-sac: <message>`` on stderr, whitespace (newlines too) folded into one line."""
    typer.echo(f"robot-sac: {' '.join(message.split())}", err=True)


def main() -> None:
    """The console script: run the command; a usage error is one line, not a box.

    Typer's standalone mode would draw usage errors in a box over several lines; here they are
    caught and printed as one line, like every other error of the command.
    """
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer vendors its own click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        # typer checks choices with pydantic, whose messages start "Value error, "
        message = exc.format_message().replace("Value error, ", "")
        say_error(f"{message}{hint}")
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input or Ctrl-C at a prompt
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
