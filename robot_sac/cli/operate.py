"""The operator's commands against a running service: look (status, robots, policies) and act
(pin, follow, hold, release, pause, resume, upload).

Each takes ``--url`` and ``--token`` (or ROBOT_SAC_URL and ROBOT_SAC_TOKEN), prints rich tables,
or with ``--json`` the service's JSON answer as it is. A failure is one line on stderr and exit 1.
Imports at start-up: typer here, httpx and pydantic in the client; never torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from robot_sac.cli.app import DEFAULT_URL, OPERATE_PANEL, app, fail, say_error

if TYPE_CHECKING:  # imported inside the commands, so `robot-sac --help` does not load them
    from rich.console import Console

    from robot_sac.cli.admin_client import AdminClient

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="ROBOT_SAC_URL",
        help="The service (or a load balancer in front of its replicas).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["ROBOT_SAC_TOKEN", "ROBOT_SAC_OPERATOR_TOKEN"],
        show_default=False,
        help="Operator token (a viewer token can run status, robots and policies). Default: "
        "ROBOT_SAC_TOKEN, else ROBOT_SAC_OPERATOR_TOKEN. Prefer the variable: a flag is "
        "visible to other users in the process list.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the service's JSON answer as it is (for scripts).")
]
RobotArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="ROBOT",
        help="One robot's id (as it sends in its acts); none: every robot.",
        show_default=False,
    ),
]


@contextmanager
def _client(url: str, token: str | None) -> Iterator[AdminClient]:
    """An admin client; any failure inside becomes one line on stderr and exit 1."""
    from robot_sac.cli.admin_client import AdminClient, ServiceError

    try:
        with AdminClient(url, token) as client:
            yield client
    except ServiceError as exc:
        raise fail(str(exc)) from None


def _print_json(raw: Any) -> None:
    sys.stdout.write(json.dumps(raw, indent=2) + "\n")


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _say(message: str) -> None:
    """One line of what a control did (markup allowed)."""
    _console().print(message)


# -- looking ---------------------------------------------------------------------------------


@app.command(rich_help_panel=OPERATE_PANEL)
def status(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """What the service is doing: served version, the hold, the learner, the log, traffic.

    Shows the served version (pinned or following the newest), the hold (every robot, or the
    robots held one by one), the learner (state, updates and updates/s, effective
    update-to-data ratio, alpha, losses, replay size), transitions logged, this replica's traffic
    (acts/s, act latency p50/p99, transitions/s) and recent episode returns per version.
    """
    from robot_sac.cli.views import status_view

    with _client(url, token) as client:
        reply = client.status()
    if json_:
        _print_json(reply.raw)
    else:
        _console().print(status_view(reply.model, url))


@app.command(rich_help_panel=OPERATE_PANEL)
def robots(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """The robots the service has seen: held or not, last act, last version, episodes, returns."""
    from robot_sac.cli.views import robots_view

    with _client(url, token) as client:
        reply = client.robots()
    if json_:
        _print_json(reply.raw)
    else:
        _console().print(robots_view(reply.model))
        if reply.model.store_error:
            say_error(f"warning: no episodes: {reply.model.store_error}")


@app.command(rich_help_panel=OPERATE_PANEL)
def policies(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Every registered policy version, the served (and a pinned) one marked.

    Per version: when it was created, the learner's updates behind it, the episodes it drove,
    their mean return and success rate, and why this replica refused it, if it did.
    """
    from robot_sac.cli.views import policies_view

    with _client(url, token) as client:
        reply = client.policies()
        if json_:
            _print_json(reply.raw)
            return
        serving = client.status()  # which version is served, and whether it is pinned
    _console().print(policies_view(reply.model, serving.model))


# -- acting ----------------------------------------------------------------------------------


@app.command(rich_help_panel=OPERATE_PANEL)
def pin(
    version: Annotated[
        int,
        typer.Argument(min=0, metavar="VERSION", help="The version to serve.", show_default=False),
    ],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Serve VERSION and stop following new ones (a rollback), at once; `follow` undoes it."""
    with _client(url, token) as client:
        reply = client.pin(version)
    if json_:
        _print_json(reply.raw)
    else:
        _say(
            f"serving version {reply.model.served_version}, pinned: new versions are not served "
            "until `robot-sac follow`"
        )


@app.command(rich_help_panel=OPERATE_PANEL)
def follow(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Serve the newest version again, and each newer one as the learner publishes it."""
    with _client(url, token) as client:
        reply = client.follow()
    if json_:
        _print_json(reply.raw)
    else:
        _say(f"following the newest version: serving {reply.model.served_version}")


@app.command(rich_help_panel=OPERATE_PANEL)
def hold(
    robot: RobotArgument = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Hold every robot (or only ROBOT): its acts answer the task's safe action until released.

    It takes effect at once for every act that arrives after it. A software hold: it does not
    replace a robot's hardware emergency stop.
    """
    with _client(url, token) as client:
        reply = client.hold(robot)
    if json_:
        _print_json(reply.raw)
        return
    answer = reply.model
    stored = "" if answer.hold_persisted else " (in force here; not stored yet)"
    if robot is None:
        _say(f"[bold red]holding every robot[/]: acts answer the safe action{stored}")
    elif robot in answer.held_robots:
        _say(f"[bold yellow]holding {robot}[/]: its acts answer the safe action{stored}")
    elif answer.hold:  # a service that cannot hold one robot alone held them all (the safe side)
        _say(f"[bold red]holding every robot[/]: this service cannot hold {robot} alone{stored}")
    else:
        raise fail(f"the service answered without holding {robot}: {answer.held_robots}")


@app.command(rich_help_panel=OPERATE_PANEL)
def release(
    robot: RobotArgument = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """End the hold for every robot (or only ROBOT's own hold); robots act on the policy again.

    Releasing every robot ends the hold for all; robots held one by one stay held until each is
    released by name.
    """
    with _client(url, token) as client:
        reply = client.release(robot)
    if json_:
        _print_json(reply.raw)
        return
    answer = reply.model
    still = sorted(answer.held_robots)
    if robot is None:
        tail = f"; still held one by one: {', '.join(still)}" if still else ""
        _say(f"released the hold for every robot{tail}")
    else:
        tail = " (the hold for every robot is still on)" if answer.hold else ""
        _say(f"released {robot}{tail}")


@app.command(rich_help_panel=OPERATE_PANEL)
def pause(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Pause the learner: it stops updating and publishing within a second (robots act on)."""
    with _client(url, token) as client:
        reply = client.pause()
    if json_:
        _print_json(reply.raw)
    else:
        _say("learner paused: no updates, no new versions until `robot-sac resume`")


@app.command(rich_help_panel=OPERATE_PANEL)
def resume(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Resume the learner after a pause."""
    with _client(url, token) as client:
        reply = client.resume()
    if json_:
        _print_json(reply.raw)
    else:
        _say("learner resumed")


@app.command(rich_help_panel=OPERATE_PANEL)
def upload(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A version file (.safetensors) trained elsewhere.",
            show_default=False,
        ),
    ],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Register FILE (a version file trained elsewhere) as the next policy version.

    The service checks it like any version (the task, shapes, finite weights) and answers the
    number it got. A following service serves it while it is the newest; `pin N` serves it
    whatever the learner publishes next.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}") from None
    with _client(url, token) as client:
        reply = client.upload(data)
    if json_:
        _print_json(reply.raw)
    else:
        _say(f"uploaded {file} as version {reply.model.version}")
