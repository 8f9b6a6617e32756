"""``robot-sac train-local``: SAC in one process on a Gymnasium env (a check of the algorithm)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from robot_sac.cli import resolve
from robot_sac.cli.app import DEVICE_METAVAR, TOOLS_PANEL, app, parse_device


@app.command("train-local", rich_help_panel=TOOLS_PANEL)
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
    device: Annotated[
        str, typer.Option(parser=parse_device, metavar=DEVICE_METAVAR, help="Torch device.")
    ] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: all cores).")] = 0,
    config: Annotated[
        str | None,
        typer.Option(
            help="SAC settings as JSON over the task defaults, e.g. '{\"lr\": 0.001}' (an unknown "
            "key is refused)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train SAC in this one process on a Gymnasium env: no service, no log, no learner.

    A check of the algorithm on its own; the product loop is the service, the transition log and
    the learner. Writes the final policy as a version file that `load_policy` reads.
    """
    # Checked before training: the env, the settings, where the results go and the device.
    spec = resolve.task_spec(env, None, config, sac_flag="--config")
    cfg = spec.sac
    resolve.writable_dir(out, "--out")
    dev = resolve.device(device)

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from robot_sac.devices import set_cpu_threads
    from robot_sac.policy import load_policy, save_policy
    from robot_sac.sim.envs import make_env
    from robot_sac.train_local import evaluate, train_local

    console = Console()
    n_threads = set_cpu_threads(threads)
    train_env, eval_env = make_env(env), make_env(env)
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
