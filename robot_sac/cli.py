"""The ``robot-sac`` command: the composition root of the project.

This is the one module of the core that may reach ``robot_sac.services`` and ``robot_sac.sim``,
and it does so only inside the commands that need them, so ``import robot_sac.cli`` stays light.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from robot_sac import __version__

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
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu or cuda (ROBOT_SAC_DEVICE).")]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]


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


@app.command("train-local")
def train_local_command(
    env: Annotated[str, typer.Option(help="Gymnasium environment id.")] = "Pendulum-v1",
    steps: Annotated[int, typer.Option(min=1, help="Environment steps to train for.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the run (env, network init, sampling).")] = 0,
    eval_every: Annotated[
        int,
        typer.Option(
            min=0, help="Score the deterministic policy every N steps (0: at the end only)."
        ),
    ] = 2_000,
    eval_episodes: Annotated[int, typer.Option(min=1, help="Episodes per evaluation.")] = 10,
    out: Annotated[
        Path, typer.Option(help="Folder for the final policy version file and a results JSON.")
    ] = Path("runs/train-local"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: all cores).")] = 0,
    config: Annotated[
        str | None,
        typer.Option(help="SAC settings as JSON over the task defaults, e.g. '{\"lr\": 0.001}'."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train SAC in this one process on a Gymnasium env: no service, no log, no learner.

    A check of the algorithm on its own; the product loop is the service, the transition log and
    the learner. Writes the final policy as a version file that `load_policy` reads.
    """
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from robot_sac.config import SACConfig, tuned_config
    from robot_sac.devices import resolve_device, set_cpu_threads
    from robot_sac.policy import load_policy, save_policy
    from robot_sac.sim.envs import make_env, task_spec_from_env
    from robot_sac.train_local import evaluate, train_local

    console = Console()
    try:
        overrides = json.loads(config) if config else {}
        cfg = tuned_config(env).model_copy(update=overrides)
        cfg = SACConfig.model_validate(cfg.model_dump())  # re-validate the overrides
    except (json.JSONDecodeError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    n_threads = set_cpu_threads(threads)
    dev = resolve_device(device)
    train_env, eval_env = make_env(env), make_env(env)
    spec = task_spec_from_env(train_env, sac=cfg)
    console.print(
        f"[bold]train-local[/] {env}: obs {spec.obs_dim}, actions {spec.action_dim}, "
        f"{steps} steps, seed {seed}, {dev}, {n_threads} threads"
    )
    result = train_local(
        train_env,
        spec,
        steps,
        seed=seed,
        eval_env=eval_env,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        device=dev,
        progress=progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / "policy.safetensors"
    digest = save_policy(
        policy_path,
        result.sac.actor,
        spec.action_low,
        spec.action_high,
        version=1,
        updates=result.sac.updates,
    )
    # Score the file, not the in-memory network: what ships is what is measured.
    pi = load_policy(policy_path, sha256=digest)
    final = evaluate(
        lambda o: pi.act(o, deterministic=True), eval_env, eval_episodes, 10_000 + seed * 1000
    )
    table = Table("steps", "mean return", title="deterministic evaluations")
    for step, score in result.evaluations:
        table.add_row(str(step), f"{score:.1f}")
    table.add_row("final (from the file)", f"{np.mean(final):.1f} ± {np.std(final):.1f}")
    console.print(table)
    summary = {
        "env": env,
        "steps": steps,
        "seed": seed,
        "updates": result.sac.updates,
        "seconds": result.seconds,
        "evaluations": result.evaluations,
        "final_returns": final,
        "policy": str(policy_path),
        "sha256": digest,
        "config": cfg.model_dump(),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(
        f"{result.sac.updates} updates in {result.seconds:.0f} s; policy written to {policy_path}"
    )


def _task(env: str | None, task: Path | None):  # type: ignore[no-untyped-def]
    """The task spec from exactly one of --env (a Gymnasium id) or --task (a JSON/TOML file)."""
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


def _settings(**flags: object):  # type: ignore[no-untyped-def]
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


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
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
    log_level: LogLevelOption = "info",
) -> None:
    """Run the inference service: actions over HTTP, the transition log, the operator's controls.

    Tokens come from ROBOT_SAC_ROBOT_TOKEN and ROBOT_SAC_OPERATOR_TOKEN (and, for read-only
    watchers of status, robots and policies, ROBOT_SAC_VIEWER_TOKEN); without them the service
    refuses to bind anything but loopback. API docs are served at /docs.
    """
    import logging

    import uvicorn

    from robot_sac.services.inference import create_app
    from robot_sac.services.inference.server import server_config

    spec = _task(env, task)
    settings = _settings(
        data_dir=data_dir,
        store_url=store_url,
        host=host,
        port=port,
        device=device,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    if not settings.auth_enabled and not _is_loopback(settings.host):
        typer.echo(
            f"refusing to serve on {settings.host} without tokens: anyone who can reach it could "
            "drive the robots. Set ROBOT_SAC_ROBOT_TOKEN and ROBOT_SAC_OPERATOR_TOKEN, or bind "
            "127.0.0.1.",
            err=True,
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.auth_enabled:
        typer.echo(f"no tokens configured: serving without authentication on {settings.host} only")
    typer.echo(
        f"robot_sac service for {spec.name} on http://{settings.host}:{settings.port} "
        "(API docs at /docs)"
    )
    for warning in settings.token_warnings():
        typer.echo(f"warning: {warning}", err=True)
    uvicorn.Server(
        server_config(create_app(settings, spec), settings, log_level=log_level.lower())
    ).run()


@app.command()
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
    progress: Annotated[bool, typer.Option(help="Show a live status line.")] = True,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the learner: tail the transition log, train SAC, publish policy versions.

    It resumes from its checkpoint (in DATA_DIR/learner), obeys the operator's pause and resume,
    and on SIGTERM or Ctrl-C publishes what it learnt, checkpoints and exits 0.
    """
    import logging
    import signal
    import threading

    from robot_sac.devices import resolve_device, set_cpu_threads
    from robot_sac.services.learner import Learner
    from robot_sac.store import open_store

    spec = _task(env, task)
    settings = _settings(
        data_dir=data_dir,
        store_url=store_url,
        device=device,
        learner_threads=threads,
        publish_every=publish_every,
        keep_versions=keep_versions,
        keep_every=keep_every,
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dev = resolve_device(settings.device)
    if dev.type == "cpu":
        set_cpu_threads(settings.learner_threads, spare=1)
    store = open_store(spec, settings.data_dir, settings.store_url)
    learner = Learner(settings, spec, store, dev)
    try:
        _start_learner(learner, progress)
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


def _run_learner(learner, stop, max_updates: int | None, progress: bool) -> None:  # type: ignore[no-untyped-def]
    if not progress:
        learner.run(stop.is_set, max_updates)
        return
    from rich.live import Live

    def line() -> str:
        s = learner.status()
        losses = " ".join(f"{k[5:]} {v:.3g}" for k, v in s["losses"].items())
        return (
            f"[bold]{s['state']}[/] updates {s['updates']} ({s['updates_per_s']:.0f}/s) · replay "
            f"{s['replay_size']} · version {s['latest_version']} · {losses}"
        )

    shown = [0.0]
    with Live(line(), refresh_per_second=2) as live:

        def refresh() -> None:
            if time.monotonic() - shown[0] > 0.5:
                live.update(line())
                shown[0] = time.monotonic()

        learner.run(stop.is_set, max_updates, on_pass=refresh)


DEFAULT_ENV = "PandaReachDense-v3"


@app.command()
def sim(
    url: Annotated[str, typer.Option(help="The inference service.")] = "http://127.0.0.1:8000",
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
) -> None:
    """Simulated robots acting through the service over HTTP and logging every transition.

    Each robot is its own process with its own physics client. Episode returns (and success, for
    the Panda tasks) are reported per policy version. A restart of the service is ridden out:
    robots wait, retry and go on, losing no transition.
    """
    from rich.console import Console

    from robot_sac.sim.fleet import Fleet

    console = Console()
    per_robot = None if steps is None else -(-steps // robots)
    fleet = Fleet(url, env, robots, per_robot, seed, rate_hz, token, pace).start()
    table: dict[int, list[Any]] = {}
    console.print(f"{robots} simulated robots on {env} -> {url} (Ctrl-C stops them cleanly)")
    try:
        last = time.monotonic()
        while not fleet.done:
            for report in fleet.reports():
                table.setdefault(report.policy_version, []).append(report)
            if time.monotonic() - last >= 5.0 and table:
                console.print(_episode_summary(table))
                last = time.monotonic()
            time.sleep(0.1)
    except KeyboardInterrupt:
        console.print("stopping the robots (they flush their transitions first)...")
    finally:
        fleet.stop()
    for report in fleet.reports():
        table.setdefault(report.policy_version, []).append(report)
    if table:
        console.print(_episode_summary(table))
    if fleet.failed:
        raise typer.Exit(1)


def _episode_summary(table: dict[int, list[Any]], last: int = 5) -> str:
    lines = []
    for version in sorted(table)[-last:]:
        reports = table[version]
        mean = sum(r.episode_return for r in reports) / len(reports)
        successes = [r.success for r in reports if r.success is not None]
        rate = f", success {sum(successes) / len(successes):.0%}" if successes else ""
        lines.append(f"  version {version}: {len(reports)} episodes, mean return {mean:.2f}{rate}")
    return "\n".join(lines)


@app.command()
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
    port: Annotated[int, typer.Option(help="Port of the inference service.")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed of the robots.")] = 0,
    publish_every: Annotated[
        int,
        typer.Option(
            min=1, help="Publish a version every N updates (robots paced to the learner act on it)."
        ),
    ] = 25,
) -> None:
    """Run the whole loop on this machine: the service, the learner and simulated robots.

    Robots act through the service over HTTP, the learner trains on what they log and publishes
    versions the service swaps in. The robots keep to the learner's update-to-data ratio, as real
    robots at their control rate would. With --steps it stops by itself; Ctrl-C stops everything
    cleanly (the learner checkpoints); running it again on the same data directory resumes.
    """
    import signal

    from rich.console import Console

    from robot_sac.sim.fleet import Fleet

    console = Console()
    spec = _task(env, None)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    port = port if _port_free(port) else _free_port()
    url = f"http://127.0.0.1:{port}"
    procs: dict[str, Any] = {}
    fleet = None
    try:
        console.print(f"[bold]robot-sac up[/]: {env}, {robots} robots, data in {data_dir}")
        procs["service"] = _spawn(
            [
                "serve",
                "--env",
                env,
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            logs / "service.log",
        )
        _wait_ready(url, procs["service"], logs / "service.log")
        procs["learner"] = _spawn(
            [
                "learn",
                "--env",
                env,
                "--data-dir",
                str(data_dir),
                "--no-progress",
                "--threads",
                "1",
                "--publish-every",
                str(publish_every),
                # `up` publishes often: keep every 10th version too, for `plot`'s learning curve
                # (about 0.3 MB a version), unless the user chose their own retention.
                *([] if "ROBOT_SAC_KEEP_EVERY" in os.environ else ["--keep-every", "10"]),
                "--log-level",
                "warning",
            ],
            logs / "learner.log",
        )
        per_robot = None if steps is None else -(-steps // robots)
        fleet = Fleet(url, env, robots, per_robot, seed, pace=True).start()
        _live(console, url, fleet, procs, spec)
        if steps is not None:
            _wait_for_learner(url, spec, steps, procs["learner"])
    except KeyboardInterrupt:
        console.print("stopping: robots flush their transitions, the learner checkpoints...")
    finally:
        if fleet is not None:
            fleet.stop()
        _stop(procs.get("learner"), 120)
        summary = _fetch_status(url)
        _stop(procs.get("service"), 30)
    if summary is not None:
        console.print(_final_summary(summary, data_dir, env))
    # uvicorn re-raises the SIGTERM it was stopped with, so the service's clean exit is -15
    clean = {"service": (0, None, -signal.SIGTERM), "learner": (0, None)}
    failed = [name for name, p in procs.items() if p.returncode not in clean[name]]
    if failed or (fleet is not None and fleet.failed):
        console.print(f"[red]a process failed[/]: {failed or 'a robot'}; see {logs}")
        raise typer.Exit(1)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log_path: Path):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    with open(log_path, "ab") as log:
        # its own session: Ctrl-C reaches only `up`, which stops the parts in order
        return subprocess.Popen(
            [sys.executable, "-m", "robot_sac.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(url: str, proc: Any, log_path: Path, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the service did not become ready; see {log_path}")


def _fetch_status(url: str) -> dict[str, Any] | None:
    import httpx

    try:
        return httpx.get(f"{url}/v1/admin/status", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return None


def _act_latency(url: str) -> tuple[float, float] | None:
    """p50 and p99 of /v1/act in ms, from the service's histogram (bucket-interpolated)."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return None
    buckets = []
    for line in text.splitlines():
        if line.startswith("robot_sac_act_latency_seconds_bucket") and 'route="/v1/act"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]

    def quantile(q: float) -> float:
        for le, count in buckets:
            if count >= q * total:
                return le * 1e3
        return float("inf")

    return quantile(0.5), quantile(0.99)


def _live(console: Any, url: str, fleet: Any, procs: dict[str, Any], spec: Any) -> None:
    from rich.live import Live
    from rich.table import Table

    reported: dict[int, list[Any]] = {}

    def view() -> Table:
        status = _fetch_status(url) or {}
        learner = status.get("learner", {})
        table = Table(title=f"robot_sac · {spec.name}", show_header=False, expand=False)
        latency = _act_latency(url)
        table.add_row("served version", str(status.get("served_version")))
        table.add_row(
            "learner",
            f"{learner.get('state', '?')} · {learner.get('updates', 0)} updates · "
            f"{learner.get('updates_per_s', 0):.0f}/s · replay {learner.get('replay_size', 0)}",
        )
        table.add_row("transitions logged", str(status.get("transitions", 0)))
        table.add_row(
            "act latency",
            "-" if latency is None else f"p50 ≤ {latency[0]:.2f} ms · p99 ≤ {latency[1]:.2f} ms",
        )
        for e in status.get("episodes", [])[-5:]:
            success = "" if e.get("success_rate") is None else f" · success {e['success_rate']:.0%}"
            table.add_row(
                f"version {e['version']}",
                f"{e['episodes']} episodes · return {e['mean_return']:.2f}{success}",
            )
        table.add_row("API docs · metrics", f"{url}/docs · {url}/metrics")
        return table

    with Live(view(), console=console, refresh_per_second=2) as live:
        while not fleet.done:
            for report in fleet.reports():
                reported.setdefault(report.policy_version, []).append(report)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited unexpectedly (code {proc.returncode})")
            live.update(view())
            time.sleep(0.5)
        live.update(view())


def _wait_for_learner(
    url: str, spec: Any, steps: int, learner: Any, timeout: float = 600.0
) -> None:
    """After the last step, let the learner finish the updates that data allows."""
    cfg = spec.sac
    due = int(cfg.utd * max(0, steps - cfg.learning_starts)) if cfg.utd > 0 else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and learner.poll() is None:
        status = _fetch_status(url) or {}
        if status.get("learner", {}).get("updates", 0) >= due - int(cfg.utd * 5):
            return
        time.sleep(0.2)


def _stop(proc: Any, timeout: float) -> None:
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _final_summary(status: dict[str, Any], data_dir: Path, env: str) -> str:
    learner = status.get("learner", {})
    lines = [
        f"done: {status.get('transitions')} transitions logged, {learner.get('updates')} updates, "
        f"newest version {status.get('latest_version')}.",
    ]
    for e in status.get("episodes", [])[-3:]:
        success = "" if e.get("success_rate") is None else f", success {e['success_rate']:.0%}"
        lines.append(
            f"  version {e['version']}: {e['episodes']} episodes, mean return "
            f"{e['mean_return']:.2f}{success}"
        )
    lines += [
        f"policies: {data_dir}/policies · learner checkpoint and TensorBoard: {data_dir}/learner",
        f"learning curve: robot-sac plot --data-dir {data_dir}",
        f"serve the newest version: robot-sac serve --env {env} --data-dir {data_dir}",
        f"resume training: robot-sac up --env {env} --data-dir {data_dir}",
    ]
    return "\n".join(lines)


@app.command()
def plot(
    data_dir: Annotated[Path, typer.Option(help="A data directory of `up` or `serve`.")] = Path(
        "data"
    ),
    out: Annotated[
        Path | None, typer.Option(help="PNG to write (default: DATA_DIR/learning_curve.png).")
    ] = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Plot episode return (and success) against environment steps, one point per version.

    It reads the SQLite store in DATA_DIR, or the PostgreSQL store of a fleet (--store-url).
    """

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_sac.store import StoreError, open_existing

    url = store_url or os.environ.get("ROBOT_SAC_STORE_URL") or None
    try:
        store = open_existing(data_dir, url)
    except StoreError as exc:
        hint = "--store-url" if url else "--data-dir"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    try:
        episodes = {e.version: e for e in store.episodes_by_version(recent=0)}
        records = [r for r in store.list_policies() if r.version in episodes]
        steps = store.steps_at([r.registered_at for r in records])
        name = store.spec.name
    finally:
        store.close()
    if not records:
        raise typer.BadParameter(
            f"{'the store' if url else data_dir} holds no finished episodes yet",
            param_hint="--store-url" if url else "--data-dir",
        )
    has_success = any(episodes[r.version].success_rate is not None for r in records)
    fig, axes = plt.subplots(
        2 if has_success else 1, 1, figsize=(7, 6 if has_success else 3.5), sharex=True
    )
    axes = axes if has_success else [axes]
    axes[0].plot(steps, [episodes[r.version].mean_return for r in records], "o-", ms=3)
    axes[0].set_ylabel("mean episode return")
    axes[0].set_title(f"{name}: one point per policy version")
    if has_success:
        axes[1].plot(
            steps,
            [100 * (episodes[r.version].success_rate or 0) for r in records],
            "o-",
            ms=3,
            color="C2",
        )
        axes[1].set_ylabel("success (%)")
        axes[1].set_ylim(-5, 105)
    axes[-1].set_xlabel("environment steps logged when the version was published")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target = out or data_dir / "learning_curve.png"
    fig.savefig(target, dpi=120)
    typer.echo(f"wrote {target} ({len(records)} versions)")
    pruned = len(set(episodes) - {r.version for r in records})
    if pruned:
        typer.echo(
            f"{pruned} versions that drove episodes were deleted by retention and are not "
            "plotted (ROBOT_SAC_KEEP_VERSIONS, ROBOT_SAC_KEEP_EVERY keep more)"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
