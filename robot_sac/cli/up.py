"""``robot-sac up``: the service, the learner and simulated robots on one machine, supervised."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from robot_sac.cli.app import (
    DEFAULT_ENV,
    DEFAULT_PORT,
    RUN_PANEL,
    DemosOption,
    InterveneOption,
    SacOption,
    app,
    refuse,
)
from robot_sac.cli.extras import require

if TYPE_CHECKING:
    import subprocess

    from robot_sac.schemas import TaskSpec


@app.command(rich_help_panel=RUN_PANEL)
def up(
    env: Annotated[str, typer.Option(help="Gymnasium env id of the task.")] = DEFAULT_ENV,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots.")] = 2,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="Stop after this many environment steps in all (default: Ctrl-C)."
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Where the store, policies and learner live.")
    ] = Path("data"),
    port: Annotated[
        int, typer.Option(help="Port of the inference service (another if it is taken).")
    ] = DEFAULT_PORT,
    seed: Annotated[int, typer.Option(help="Seed of the robots.")] = 0,
    publish_every: Annotated[
        int,
        typer.Option(
            min=1, help="Publish a version every N updates (robots paced to the learner act on it)."
        ),
    ] = 25,
    demos: DemosOption = 0,
    intervene: InterveneOption = 0.0,
    sac: SacOption = None,
) -> None:
    """Run the whole loop on this machine: the service, the learner and simulated robots.

    Robots act through the service over HTTP, the learner trains on what they log and publishes
    versions the service swaps in. The robots keep to the learner's update-to-data ratio, as real
    robots at their control rate would. With --steps it stops by itself; Ctrl-C stops everything
    cleanly (the learner checkpoints); running it again on the same data directory resumes.
    With --demos and --intervene a scripted expert stands in for a teleoperator (none unless
    asked). SIGTERM and SIGHUP (a closed terminal) stop it as Ctrl-C does; its parts also end
    when it is killed.
    """
    import signal

    from rich.console import Console

    from robot_sac import processes
    from robot_sac.cli import live, resolve
    from robot_sac.sim.experts import expert_for
    from robot_sac.sim.fleet import Fleet

    if demos or intervene:  # said before anything starts
        try:
            expert_for(env)
        except ValueError as exc:
            raise refuse(f"--demos and --intervene need a scripted expert: {exc}") from None
    console = Console()
    sac = _with_prior_share(sac) if demos or intervene else sac
    require("up")  # a missing extra: one line, before anything is created
    spec = resolve.task_spec(env, None, sac)
    resolve.data_dir(data_dir)  # a file, no permission, another task's store: said here, once
    resolve.open_store(spec, resolve.settings(data_dir=data_dir)).close()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    port = port if processes.port_free(port) else processes.free_port()
    url = f"http://127.0.0.1:{port}"
    # Tokens in the environment reach the service (it reads them itself); the robots act with
    # the robot token, and the live view and the robots' pacing read the status with the
    # viewer's (else the operator's) token.
    robot_token = os.environ.get("ROBOT_SAC_ROBOT_TOKEN") or None
    status_token = (
        os.environ.get("ROBOT_SAC_VIEWER_TOKEN")
        or os.environ.get("ROBOT_SAC_OPERATOR_TOKEN")
        or None
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    fleet = None
    failure = None
    # SIGTERM and SIGHUP stop it as Ctrl-C does: the parts stop in order, cleanly
    with processes.stop_signals() as signals:
        try:
            console.print(f"[bold]robot-sac up[/]: {env}, {robots} robots, data in {data_dir}")
            service_args = ["serve", "--env", env, "--data-dir", str(data_dir), "--port", str(port)]
            procs["service"] = processes.spawn(
                [*service_args, "--log-level", "warning"], logs / "service.log"
            )
            processes.wait_ready(url, procs["service"], logs / "service.log", name="the service")
            learner_args = ["learn", "--env", env, "--data-dir", str(data_dir), "--no-progress"]
            procs["learner"] = processes.spawn(
                [
                    *learner_args,
                    *("--threads", "1", "--publish-every", str(publish_every)),
                    # `up` publishes often: keep every 10th version too, for `plot`'s learning curve
                    # (about 0.3 MB a version), unless the user chose their own retention.
                    *([] if "ROBOT_SAC_KEEP_EVERY" in os.environ else ["--keep-every", "10"]),
                    *([] if sac is None else ["--sac", sac]),
                    *("--log-level", "warning"),
                ],
                logs / "learner.log",
            )
            per_robot = None if steps is None else -(-steps // robots)
            fleet = Fleet(
                url,
                env,
                robots,
                per_robot,
                seed,
                token=robot_token,
                status_token=status_token,
                pace=True,
                demos=demos,
                intervene=intervene,
            ).start()
            live.watch(console, url, fleet, procs, spec.name, status_token)
            if steps is not None:
                _wait_for_learner(url, spec, steps, procs["learner"], status_token)
        except KeyboardInterrupt:
            console.print("stopping: robots flush their transitions, the learner checkpoints...")
        except RuntimeError as exc:  # a part failed to start or exited: said once it is all stopped
            failure = str(exc)
        finally:
            signals.begin()  # a SIGTERM or SIGHUP from here on must not cut the stop short
            if fleet is not None:
                fleet.stop()
            processes.stop(procs.get("learner"), 120)
            summary = live.fetch_status(url, status_token)
            processes.stop(procs.get("service"), 30)
    if summary is not None:
        console.print(live.final_summary(summary, data_dir, env))
    # uvicorn re-raises the SIGTERM it was stopped with, so the service's clean exit is -15. The
    # learner sets its handler (checkpoint, exit 0) before it opens the store: a SIGTERM that
    # comes earlier (Ctrl-C while it imports) ends it with -15 having read and written nothing.
    clean = {"service": (0, None, -signal.SIGTERM), "learner": (0, None, -signal.SIGTERM)}
    failed = [name for name, p in procs.items() if p.returncode not in clean[name]]
    problems = [failure] if failure else []
    if failed:
        problems.append(f"exited with an error: {', '.join(failed)}")
    if fleet is not None and fleet.failed:
        problems.append("a robot failed")
    if problems:
        Console(stderr=True).print(f"[red]robot-sac up: {'; '.join(problems)}[/]; see {logs}")
        raise typer.Exit(1)


# With demonstrations or corrections in the log, half of each batch comes from them (RLPD's
# symmetric sampling), unless --sac says otherwise.
PRIOR_SHARE_WITH_EXPERT = 0.5


def _with_prior_share(sac: str | None) -> str:
    """``--sac`` with ``prior_share`` set to :data:`PRIOR_SHARE_WITH_EXPERT` unless it sets one
    (a malformed --sac is left to the task's own check, which says what is wrong)."""
    import json

    try:
        overrides = {} if sac is None else json.loads(sac)
    except json.JSONDecodeError:
        return sac or ""
    if not isinstance(overrides, dict) or "prior_share" in overrides:
        return sac or ""
    return json.dumps({**overrides, "prior_share": PRIOR_SHARE_WITH_EXPERT})


def _wait_for_learner(
    url: str,
    spec: TaskSpec,
    steps: int,
    learner: subprocess.Popen[bytes],
    token: str | None,
    timeout: float = 600.0,
) -> None:
    """After the last step, let the learner finish the updates that data allows."""
    from robot_sac.cli.live import learner_caught_up

    cfg = spec.sac
    due = int(cfg.utd * max(0, steps - cfg.learning_starts)) if cfg.utd > 0 else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and learner.poll() is None:
        if learner_caught_up(url, due, slack=int(cfg.utd * 5), token=token):
            return
        time.sleep(0.2)
