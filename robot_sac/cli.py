"""The ``robot-sac`` command: the composition root of the project.

This is the one module of the core that may reach ``robot_sac.services`` and ``robot_sac.sim``,
and it does so only inside the commands that need them, so ``import robot_sac.cli`` stays light.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from robot_sac import __version__

app = typer.Typer(
    help="robot_sac: Soft Actor-Critic for robots that learn while they work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


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
    from robot_sac.settings import Settings

    base = Settings()
    given = {k: v for k, v in flags.items() if v is not None}
    return Settings.model_validate({**base.model_dump(), **given}) if given else base


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
    env: Annotated[str | None, typer.Option(help="Gymnasium env id whose task to serve.")] = None,
    task: Annotated[
        Path | None, typer.Option(help="Task file (JSON or TOML) describing a real robot.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (ROBOT_SAC_DATA_DIR).")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option(help="postgresql://... (ROBOT_SAC_STORE_URL).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (ROBOT_SAC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ROBOT_SAC_PORT).")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (ROBOT_SAC_DEVICE).")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Most observations per forward pass.")
    ] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Extra batching window in ms.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the inference service: actions over HTTP, the transition log, the operator's controls.

    Tokens come from ROBOT_SAC_ROBOT_TOKEN and ROBOT_SAC_OPERATOR_TOKEN; without them the service
    refuses to bind anything but loopback. API docs are served at /docs.
    """
    import logging

    import uvicorn

    from robot_sac.services.inference import create_app

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
    uvicorn.run(
        create_app(settings, spec),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        access_log=False,
    )


@app.command()
def learn(
    env: Annotated[str | None, typer.Option(help="Gymnasium env id whose task to learn.")] = None,
    task: Annotated[Path | None, typer.Option(help="Task file (JSON or TOML).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (ROBOT_SAC_DATA_DIR).")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option(help="postgresql://... (ROBOT_SAC_STORE_URL).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (ROBOT_SAC_DEVICE).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch CPU threads (ROBOT_SAC_LEARNER_THREADS; 0: all).")
    ] = None,
    publish_every: Annotated[int | None, typer.Option(help="Publish every N updates.")] = None,
    max_updates: Annotated[int | None, typer.Option(help="Stop after this many updates.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a live status line.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
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
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dev = resolve_device(settings.device)
    if dev.type == "cpu":
        set_cpu_threads(settings.learner_threads)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
