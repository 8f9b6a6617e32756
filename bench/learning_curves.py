"""Learning curves: our whole loop against Stable-Baselines3's SAC in one process, side by side.

Ours is ``robot-sac up`` (the service, the learner process and 2 simulated robots acting over
HTTP, paced to the learner's update-to-data ratio); SB3 is ``SAC.learn`` on the same env with the
same hyper-parameters, the task's in ``robot_sac.config.TUNED`` (when this file's results were
written: gamma 0.95, lr 1e-3, initial alpha 0.1, learning_starts 500, batch 256, (256, 256)
networks, one update per step; the update-to-data ratio is SB3's gradient steps per step), one
torch thread like our learner. For each seed both
train for the same number of environment steps; the success rate of the deterministic policy on
``--episodes`` episodes with unseen seeds is measured at 2k, 4k and 6k steps (for ours: the version
published when the learner had done the updates those steps allow, utd x (steps - learning_starts),
as SB3 has at that step), and so is the wall time until a policy first succeeds in >= 95 %.

    python bench/learning_curves.py                 # 6 seeds, about 40 minutes
    python bench/learning_curves.py --quick         # 1 seed, 3,000 steps
    python bench/learning_curves.py --first-seed 6 --add-to bench/results/learning_curves.json
                                                    # 6 more seeds, pooled with an earlier run

Writes ``bench/results/learning_curves.json`` and ``docs/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac import processes
from robot_sac.config import tuned_config
from robot_sac.policy import load_policy
from robot_sac.sim.envs import make_env
from robot_sac.store import open_existing
from robot_sac.train_local import EVAL_SEED, rollout

ENV = "PandaReachDense-v3"
ROOT = Path(__file__).resolve().parent.parent
EVERY = 250  # evaluation spacing, in updates (ours) and steps (SB3)
LABELS = {"ours": "robot_sac up (service + learner + 2 robots)", "sb3": "SB3 SAC in-process"}


def success_rate(act: Any, episodes: int) -> float:
    env = make_env(ENV)
    try:
        return float(np.mean([e.success for e in rollout(act, env, episodes, EVAL_SEED)]))
    finally:
        env.close()


def standard_error(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def up_command(
    env_id: str, robots: int, steps: int, data: Path, seed: int = 0, sac: str | None = None
) -> list[str]:
    """``robot-sac up`` on a free port, as a subprocess's argument list (``sac``: its --sac)."""
    return processes.robot_sac_command(
        [
            *("up", "--env", env_id),
            *("--robots", str(robots), "--steps", str(steps), "--data-dir", str(data)),
            *("--port", str(processes.free_port()), "--seed", str(seed)),
            *(() if sac is None else ("--sac", sac)),
        ]
    )


def run_ours(
    seed: int, steps: int, episodes: int, checkpoints: list[int], work: Path
) -> dict[str, Any]:
    data = work / f"ours-{seed}"
    cmd = up_command(ENV, 2, steps, data, seed=seed * 10)
    start = time.time()
    # Every version is scored below: keep them all (retention would delete most of them).
    env = {**os.environ, "ROBOT_SAC_KEEP_VERSIONS": str(10**9)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"robot-sac up failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    store = open_existing(data)
    try:
        records = store.list_policies()
        at = store.steps_at([r.registered_at for r in records])
        policies = {r.version: load_policy(store.policy_bytes(r), sha256=r.sha256) for r in records}
    finally:
        store.close()
    # `up` publishes every 25 updates; scoring every version would cost more than the run, so
    # score the first version at or past each multiple of EVERY updates (SB3: every EVERY steps).
    curve, next_mark = [], 0
    for record, logged in zip(records, at, strict=True):
        if record.updates < next_mark and record is not records[-1]:
            continue
        next_mark = (record.updates // EVERY + 1) * EVERY
        pi = policies[record.version]
        rate = success_rate(lambda o, pi=pi: pi.act(o, deterministic=True), episodes)
        curve.append(
            {
                "version": record.version,
                "steps": logged,
                "updates": record.updates,
                "seconds": record.registered_at - start,
                "success": rate,
            }
        )
    # At c steps, SB3 has done utd * (c - learning_starts) updates on c steps of data; ours is the
    # version the learner published once it had done as many (robots run at most a few dozen
    # steps ahead of it, and that lag is recorded).
    cfg = tuned_config(ENV)
    at_checkpoints, lag = {}, {}
    for c in checkpoints:
        due = cfg.utd * max(0, c - cfg.learning_starts)
        version = next((p for p in curve if p["updates"] >= due), curve[-1])
        at_checkpoints[c], lag[c] = version["success"], version["steps"] - c
    first = next((p for p in curve if p["success"] >= 0.95), None)
    return {
        "seed": seed,
        "wall_s": wall,
        "curve": curve,
        "at": at_checkpoints,
        "steps_logged_minus_checkpoint": lag,
        "seconds_to_95": None if first is None else first["seconds"],
    }


def sb3_sac(env_id: str, seed: int) -> Any:
    """Stable-Baselines3's SAC on ``env_id`` with our tuned settings for it, on the CPU.

    An update-to-data ratio of N (a whole number) is SB3's ``gradient_steps=N`` after every
    step (``train_freq=1``): the same number of updates at every step as ours.
    """
    from stable_baselines3 import SAC as SB3SAC

    cfg = tuned_config(env_id)
    if cfg.utd != int(cfg.utd) or cfg.utd < 1:
        raise ValueError(f"SB3 takes a whole number of gradient steps, not utd {cfg.utd}")
    return SB3SAC(
        "MlpPolicy",
        make_env(env_id),
        learning_rate=cfg.lr,
        gamma=cfg.gamma,
        ent_coef=f"auto_{cfg.init_alpha}",
        learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size,
        buffer_size=cfg.buffer_size,
        tau=cfg.tau,
        train_freq=1,
        gradient_steps=int(cfg.utd),
        policy_kwargs={"net_arch": list(cfg.hidden)},
        seed=seed,
        device="cpu",
        verbose=0,
    )


def run_sb3(seed: int, steps: int, episodes: int, checkpoints: list[int]) -> dict[str, Any]:
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    curve: list[dict[str, Any]] = []

    class Evaluate(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.train_seconds, self.mark = 0.0, time.perf_counter()

        def _on_step(self) -> bool:
            if self.num_timesteps % EVERY == 0:
                self.train_seconds += time.perf_counter() - self.mark
                model = self.model
                rate = success_rate(lambda o: model.predict(o, deterministic=True)[0], episodes)
                curve.append(
                    {"steps": self.num_timesteps, "seconds": self.train_seconds, "success": rate}
                )
                self.mark = time.perf_counter()
            return True

    model = sb3_sac(ENV, seed)
    model.learn(steps, callback=Evaluate())
    at = {c: next((p["success"] for p in curve if p["steps"] == c), None) for c in checkpoints}
    first = next((p for p in curve if p["success"] >= 0.95), None)
    return {
        "seed": seed,
        "curve": curve,
        "at": at,
        "seconds_to_95": None if first is None else first["seconds"],
    }


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, color in (("ours", "C0"), ("sb3", "C1")):
        for run in results[name]:
            xs = [p["steps"] for p in run["curve"]]
            ys = [100 * p["success"] for p in run["curve"]]
            label = LABELS[name]
            ax.plot(
                xs,
                ys,
                "o-",
                ms=3,
                color=color,
                alpha=0.7,
                label=label if run is results[name][0] else None,
            )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success, 20 deterministic episodes (%)")
    ax.set_title(f"{ENV}: one line per seed")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per point")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3,000 steps")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1"
    )
    parser.add_argument(
        "--add-to",
        type=Path,
        default=None,
        help="an earlier result file of this script: its runs are pooled with these (more seeds)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "learning_curves.json"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "learning_curves.png")
    args = parser.parse_args()
    seeds, steps = (1, 3000) if args.quick else (args.seeds, args.steps)
    checkpoints = [c for c in (2000, 4000, 6000) if c <= steps]
    work = Path(tempfile.mkdtemp(prefix="learning-curves-"))
    results: dict[str, Any] = {"ours": [], "sb3": []}
    if args.add_to is not None:
        earlier = json.loads(args.add_to.read_text())
        settings = (earlier["env"], earlier["steps"], earlier["episodes"])
        if settings != (ENV, steps, args.episodes):
            raise SystemExit(f"{args.add_to} was run with other settings; cannot pool it")
        for name in results:
            for r in earlier["runs"][name]:  # JSON keys are strings; checkpoints are ints here
                r["at"] = {int(k): v for k, v in r["at"].items()}
                results[name].append(r)
        taken = {r["seed"] for r in results["ours"]}
        clash = taken & set(range(args.first_seed, args.first_seed + seeds))
        if clash:
            raise SystemExit(f"{args.add_to} already holds seeds {sorted(clash)}: use --first-seed")
    for seed in range(args.first_seed, args.first_seed + seeds):
        print(f"seed {seed}: robot-sac up ...", flush=True)
        results["ours"].append(run_ours(seed, steps, args.episodes, checkpoints, work))
        print(f"seed {seed}: SB3 ...", flush=True)
        results["sb3"].append(run_sb3(seed, steps, args.episodes, checkpoints))
        for name in ("ours", "sb3"):
            r = results[name][-1]
            points = "  ".join(f"{c // 1000}k {r['at'][c]:.0%}" for c in checkpoints)
            t95 = "-" if r["seconds_to_95"] is None else f"{r['seconds_to_95']:.0f} s"
            print(f"   {name:5s} {points}   first >=95 %: {t95}", flush=True)

    seeds = len(results["ours"])
    print(f"\n{ENV}, {seeds} seeds, {args.episodes} evaluation episodes per point")
    print(
        f"{'':28s}"
        + "".join(f"{c // 1000}k steps".rjust(12) for c in checkpoints)
        + "  >=95 % after (wall)"
    )
    summary: dict[str, Any] = {}
    for name, label in (("ours", "robot_sac up (2 robots)"), ("sb3", "SB3 SAC in-process")):
        means = [float(np.mean([r["at"][c] for r in results[name]])) for c in checkpoints]
        errors = [standard_error([r["at"][c] for r in results[name]]) for c in checkpoints]
        times = [r["seconds_to_95"] for r in results[name]]
        reached = [t for t in times if t is not None]
        t = (
            f"{np.median(reached):.0f} s median ({len(reached)}/{len(times)})"
            if reached
            else "never"
        )
        cells = "".join(
            f"{f'{m:.0%} ± {e * 100:.0f}':>12s}" for m, e in zip(means, errors, strict=True)
        )
        print(f"{label:28s}{cells}  {t}")
        summary[name] = {
            "success_at": dict(zip(checkpoints, means, strict=True)),
            "standard_error_at": dict(zip(checkpoints, errors, strict=True)),
            "seconds_to_95": times,
        }
    ok = all(
        summary["ours"]["success_at"][c] >= summary["sb3"]["success_at"][c] for c in checkpoints
    )
    # A seed that never reached 95 % counts as slower than any that did.
    ours_times = [np.inf if t is None else t for t in summary["ours"]["seconds_to_95"]]
    fast = bool(ours_times) and float(np.median(ours_times)) <= 180.0
    print(
        f"goal: at least SB3 at each point -> {'met' if ok else 'NOT met'} (on the means; ± is "
        "one standard error over seeds); >= 95 % within 180 s of wall time (median over seeds) "
        f"-> {'met' if fast else 'NOT met'}"
    )
    payload = {
        "benchmark": "learning_curves",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env": ENV,
        "seeds": seeds,
        "steps": steps,
        "episodes": args.episodes,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
