"""Each part of the loop alone: ``serve`` (the inference service), ``learn`` (the learner),
``sim`` (simulated robots against a service URL)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from robot_sac.cli import resolve
from robot_sac.cli.app import (
    DEFAULT_ENV,
    DEFAULT_URL,
    RUN_PANEL,
    DataDirOption,
    DemosOption,
    DeviceOption,
    EnvOption,
    InterveneOption,
    LogLevel,
    LogLevelOption,
    SacOption,
    StoreUrlOption,
    TaskOption,
    app,
    refuse,
)
from robot_sac.cli.extras import require


@app.command(rich_help_panel=RUN_PANEL)
def serve(
    env: EnvOption = None,
    task: TaskOption = None,
    data_dir: DataDirOption = None,
    store_url: StoreUrlOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (ROBOT_SAC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ROBOT_SAC_PORT).")] = None,
    device: DeviceOption = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Most observations per forward pass.")
    ] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Extra batching window in ms.")] = None,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Run the inference service: actions over HTTP, the transition log, the operator's controls.

    Tokens come from ROBOT_SAC_ROBOT_TOKEN and ROBOT_SAC_OPERATOR_TOKEN (and, for read-only
    watchers of status, robots and policies, ROBOT_SAC_VIEWER_TOKEN); without them the service
    refuses to bind anything but loopback. API docs are served at /docs. SIGTERM, SIGHUP and
    Ctrl-C stop it cleanly.
    """
    import logging
    import signal

    # Everything is checked before anything is created, the cheap checks before the imports of
    # torch and the service: a missing extra, a bad flag, setting, task, data directory or
    # device, or a store of another task, is one line and exit 2 (resolve's checks).
    require("serve")
    spec = resolve.task_spec(env, task)
    settings = resolve.settings(
        data_dir=data_dir,
        store_url=store_url,
        host=host,
        port=port,
        device=device,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    if not settings.auth_enabled and not resolve.is_loopback(settings.host):
        raise refuse(
            f"refusing to serve on {settings.host} without tokens: anyone who can reach it could "
            "drive the robots. Set ROBOT_SAC_ROBOT_TOKEN and ROBOT_SAC_OPERATOR_TOKEN, or bind "
            "127.0.0.1."
        )
    if settings.store_url is None:  # the SQLite store lives in the data directory
        resolve.data_dir(settings.data_dir)
    resolve.device(settings.device)
    # Opened here to be refused here (another task's data, a schema this version cannot read),
    # not in the service's start-up, where the reason would end a traceback. The service opens
    # its own, with the short waits that suit requests.
    resolve.open_store(spec, settings).close()

    import uvicorn

    from robot_sac.services.inference import create_app
    from robot_sac.services.inference.server import server_config

    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.auth_enabled:
        typer.echo(f"no tokens configured: serving without authentication on {settings.host} only")
    typer.echo(
        f"robot_sac service for {spec.name} on http://{settings.host}:{settings.port} "
        "(API docs at /docs)"
    )
    for warning in settings.token_warnings():
        typer.echo(f"warning: {warning}", err=True)
    server = uvicorn.Server(
        server_config(create_app(settings, spec), settings, log_level=log_level.value)
    )
    if hasattr(signal, "SIGHUP"):
        # A closed terminal (SSH gone) stops the service as Ctrl-C does: it drains its queues
        # and exits 0. uvicorn itself handles SIGINT and SIGTERM only.
        signal.signal(signal.SIGHUP, lambda *_: setattr(server, "should_exit", True))
    server.run()


@app.command(rich_help_panel=RUN_PANEL)
def learn(
    env: EnvOption = None,
    task: TaskOption = None,
    data_dir: DataDirOption = None,
    store_url: StoreUrlOption = None,
    device: DeviceOption = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads (ROBOT_SAC_LEARNER_THREADS; 0: all cores but one)."),
    ] = None,
    publish_every: Annotated[int | None, typer.Option(help="Publish every N updates.")] = None,
    keep_versions: Annotated[
        int | None,
        typer.Option(
            help="Keep the newest N versions, delete older ones (ROBOT_SAC_KEEP_VERSIONS; "
            "default 20)."
        ),
    ] = None,
    keep_every: Annotated[
        int | None,
        typer.Option(
            help="Also keep every version whose number is a multiple of K (ROBOT_SAC_KEEP_EVERY; "
            "default 100; 0: none). Pinned and served versions are always kept."
        ),
    ] = None,
    max_updates: Annotated[int | None, typer.Option(help="Stop after this many updates.")] = None,
    sac: SacOption = None,
    progress: Annotated[bool, typer.Option(help="Show a live status line.")] = True,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Run the learner: tail the transition log, train SAC, publish policy versions.

    It resumes from its checkpoint (in DATA_DIR/learner), obeys the operator's pause and resume,
    and on SIGTERM, SIGHUP or Ctrl-C publishes what it learnt, checkpoints and exits 0.
    """
    import logging
    import signal
    import threading

    require("learn")  # a missing extra: one line, before anything is created
    spec = resolve.task_spec(env, task, sac)
    settings = resolve.settings(
        data_dir=data_dir,
        store_url=store_url,
        device=device,
        learner_threads=threads,
        publish_every=publish_every,
        keep_versions=keep_versions,
        keep_every=keep_every,
    )
    resolve.data_dir(settings.data_dir)  # the checkpoint lives there whatever the store
    dev = resolve.device(settings.device)

    from robot_sac.devices import set_cpu_threads
    from robot_sac.services.learner import Learner

    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    # SIGHUP too: a closed terminal stops the learner as Ctrl-C does (publish, checkpoint, 0).
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, lambda *_: stop.set())
    if dev.type == "cpu":
        set_cpu_threads(settings.learner_threads, spare=1)
    store = resolve.open_store(spec, settings)
    learner = Learner(settings, spec, store, dev)
    try:
        _start_learner(learner, progress)
        _say_if_waiting(learner, store.where)
        _run_learner(learner, stop, max_updates, progress)
    finally:
        learner.close()
        store.close()
    typer.echo(
        f"learner stopped at {learner.sac.updates} updates; newest version "
        f"{learner.latest_version}; checkpoint {learner.checkpoint_path}"
    )


def _start_learner(learner, progress: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if not progress:
        learner.start()
        return
    with Progress(
        TextColumn("rebuilding the replay buffer"), BarColumn(), MofNCompleteColumn()
    ) as bar:
        task = bar.add_task("replay", total=None)
        learner.start(lambda done, total: bar.update(task, completed=done, total=total))


def _say_if_waiting(learner, where: str) -> None:  # type: ignore[no-untyped-def]
    """Say once, at start, that the learner waits for data and where it looks for it: a learner
    on an empty store would otherwise wait in silence."""
    have = len(learner.replay)
    need = min(learner.cfg.learning_starts, learner.cfg.buffer_size)
    if have == 0:
        typer.echo(
            f"waiting for transitions in {where}: none logged yet (robots log them through "
            "`robot-sac serve`; `robot-sac sim` runs simulated ones)"
        )
    elif have < need:
        typer.echo(f"waiting for transitions in {where}: {have} logged, learning starts at {need}")


def _run_learner(learner, stop, max_updates: int | None, progress: bool) -> None:  # type: ignore[no-untyped-def]
    if not progress:
        learner.run(stop.is_set, max_updates)
        return
    from rich.live import Live

    def line() -> str:
        s = learner.status()  # a LearnerStatus; a skipped update's loss is None, shown as "-"
        losses = " ".join(
            f"{k.removeprefix('loss_')} {'-' if v is None else format(v, '.3g')}"
            for k, v in s.losses.items()
        )
        return (
            f"[bold]{s.state}[/] updates {s.updates} ({s.updates_per_s:.0f}/s) · replay "
            f"{s.replay_size} · version {s.latest_version} · {losses}"
        )

    shown = [0.0]
    with Live(line(), refresh_per_second=2) as live:

        def refresh() -> None:
            if time.monotonic() - shown[0] > 0.5:
                live.update(line())
                shown[0] = time.monotonic()

        learner.run(stop.is_set, max_updates, on_pass=refresh)


@app.command(rich_help_panel=RUN_PANEL)
def sim(
    url: Annotated[
        str, typer.Option(envvar="ROBOT_SAC_URL", help="The inference service.")
    ] = DEFAULT_URL,
    env: Annotated[str, typer.Option(help="Gymnasium env id of the robots' task.")] = DEFAULT_ENV,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots, one process each.")] = 2,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Environment steps in all (default: until Ctrl-C).")
    ] = None,
    rate_hz: Annotated[
        float | None, typer.Option(help="Control rate per robot (default: as fast as they can).")
    ] = None,
    pace: Annotated[
        bool, typer.Option(help="Keep to the learner's update-to-data ratio (needs /v1/admin).")
    ] = False,
    token: Annotated[
        str | None, typer.Option(envvar="ROBOT_SAC_ROBOT_TOKEN", help="Robot token, if any.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Robot i is seeded seed + i.")] = 0,
    demos: DemosOption = 0,
    intervene: InterveneOption = 0.0,
) -> None:
    """Simulated robots acting through the service over HTTP and logging every transition.

    Each robot is its own process with its own physics client. Episode returns (and success, for
    the Panda tasks) are reported per policy version; demonstrations, and episodes the expert
    took over, on lines of their own. A restart of the service is ridden out: robots wait, retry
    and go on, losing no transition. SIGTERM and SIGHUP stop it as Ctrl-C does; the robots also
    stop when it is killed.
    """
    from rich.console import Console

    from robot_sac.processes import stop_signals
    from robot_sac.sim.experts import expert_for

    resolve.service_url(url)
    resolve.task_spec(env, None)  # an unknown env, or one SAC cannot act in: one line here
    if demos or intervene:
        try:
            expert_for(env)
        except ValueError as exc:
            raise refuse(f"--demos and --intervene need a scripted expert: {exc}") from None
    from robot_sac.sim.fleet import Fleet

    console = Console()
    per_robot = None if steps is None else -(-steps // robots)
    fleet = Fleet(
        url, env, robots, per_robot, seed, rate_hz, token, pace, demos=demos, intervene=intervene
    ).start()
    reports: list[Any] = []
    console.print(f"{robots} simulated robots on {env} -> {url} (Ctrl-C stops them cleanly)")
    shown = ""  # the summary last printed: one is printed only when it says something new

    def show_summary() -> None:
        nonlocal shown
        summary = _episode_summary(reports) if reports else ""
        if summary != shown:
            console.print(summary)
            shown = summary

    # SIGTERM and SIGHUP stop the robots as Ctrl-C does: each flushes its transitions first
    with stop_signals() as signals:
        try:
            last = time.monotonic()
            while not fleet.done:
                reports += fleet.reports()
                if time.monotonic() - last >= 5.0:
                    show_summary()
                    last = time.monotonic()
                time.sleep(0.1)
        except KeyboardInterrupt:
            console.print("stopping the robots (they flush their transitions first)...")
        finally:
            signals.begin()
            fleet.stop()
    reports += fleet.reports()
    show_summary()
    if fleet.failed:
        raise typer.Exit(1)


def _episode_summary(reports: list[Any], last: int = 5) -> str:
    """Demonstrations on one line, then the newest ``last`` versions' episodes: those the policy
    drove alone, and those the expert took over, apart (the expert's help is not the policy's)."""

    def stats(group: list[Any]) -> str:
        mean = sum(r.episode_return for r in group) / len(group)
        successes = [r.success for r in group if r.success is not None]
        rate = f", success {sum(successes) / len(successes):.0%}" if successes else ""
        return f"{len(group)} episodes, mean return {mean:.2f}{rate}"

    lines = []
    demos = [r for r in reports if r.demo]
    if demos:
        lines.append(f"  demonstrations: {stats(demos)}")
    by_version: dict[int | None, list[Any]] = {}
    for r in reports:
        if not r.demo:
            by_version.setdefault(r.policy_version, []).append(r)
    for version in sorted(by_version, key=lambda v: -1 if v is None else v)[-last:]:
        alone = [r for r in by_version[version] if not r.human_steps]
        helped = [r for r in by_version[version] if r.human_steps]
        parts = ([stats(alone)] if alone else []) + (
            [f"taken over by the expert: {stats(helped)}"] if helped else []
        )
        lines.append(f"  version {version}: {'; '.join(parts)}")
    return "\n".join(lines)
