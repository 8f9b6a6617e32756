"""One long run, by hand: ``robot-sac up`` against Stable-Baselines3's SAC at equal steps.

Both learn the same locomotion task with the same hyper-parameters (``robot_sac.config.TUNED``:
RL Zoo's learning rate, buffer, gamma, tau and learning starts for the task, but not its gSDE,
[400, 300] networks or 8 gradient steps every 8 steps), (256, 256) networks, one update per step
and one torch thread:
ours is the whole loop (the service, the learner process and ``--robots`` simulated robots over
HTTP, paced to the learner), SB3 is ``SAC.learn`` in one process. The two run at the same time
(they share the machine alike) and are scored the same way at the end: the mean return of the
deterministic policy on ``--episodes`` episodes with seeds neither run used.

    python bench/long_run.py              # HalfCheetahBulletEnv-v0, 100k steps
    python bench/long_run.py --env HopperBulletEnv-v0 --steps 50000

Writes ``bench/results/long_run_<env>.json``. The score of one seed is a single sample of a
noisy process: read it as "about as good" or "clearly worse", not as a ranking.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from learning_curves import sb3_sac, up_command

from robot_sac import processes
from robot_sac.policy import load_policy
from robot_sac.sim.envs import make_env
from robot_sac.store import open_existing
from robot_sac.train_local import EVAL_SEED, evaluate

ROOT = Path(__file__).resolve().parent.parent


def score(env_id: str, act: Any, episodes: int) -> list[float]:
    env = make_env(env_id)
    try:
        return evaluate(act, env, episodes, EVAL_SEED)
    finally:
        env.close()


def start_ours(env_id: str, steps: int, robots: int, data: Path, log: Path) -> subprocess.Popen:
    cmd = up_command(env_id, robots, steps, data)
    return processes.spawn_command(cmd, log, cwd=ROOT)  # ends with this script, whatever ends it


def start_sb3(env_id: str, steps: int, out: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--env", env_id, "--steps", str(steps), "--sb3-to", str(out)]
    return processes.spawn_command(cmd, log, cwd=ROOT)


def train_sb3(env_id: str, steps: int, out: Path) -> None:
    """The SB3 side, in its own process; saves the trained model (SB3's own zip format)."""
    torch.set_num_threads(1)
    model = sb3_sac(env_id, seed=0)
    start = time.perf_counter()
    model.learn(steps, progress_bar=False)
    model.save(out)
    out.with_suffix(".seconds").write_text(f"{time.perf_counter() - start}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetahBulletEnv-v0")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--robots", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    parser.add_argument("--sb3-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sb3_to is not None:
        train_sb3(args.env, args.steps, args.sb3_to)
        return

    work = Path(tempfile.mkdtemp(prefix="long-run-"))
    print(f"{args.env}, {args.steps:,} steps; logs in {work}", flush=True)
    start = time.time()
    ours = start_ours(args.env, args.steps, args.robots, work / "ours", work / "ours.log")
    sb3 = start_sb3(args.env, args.steps, work / "sb3.zip", work / "sb3.log")
    codes = {"ours": ours.wait(), "sb3": sb3.wait()}
    if any(codes.values()):
        raise SystemExit(f"a run failed ({codes}); see the logs in {work}")
    wall_ours = time.time() - start

    from stable_baselines3 import SAC as SB3SAC

    store = open_existing(work / "ours")
    try:
        newest = store.list_policies()[-1]
        policy = load_policy(store.policy_bytes(newest), sha256=newest.sha256)
        logged = store.transition_count()
    finally:
        store.close()
    model = SB3SAC.load(work / "sb3.zip", device="cpu")
    results = {
        "ours": score(args.env, lambda o: policy.act(o, deterministic=True), args.episodes),
        "sb3": score(args.env, lambda o: model.predict(o, deterministic=True)[0], args.episodes),
    }
    means = {k: float(np.mean(v)) for k, v in results.items()}
    print(f"\n{args.env} after {args.steps:,} steps, {args.episodes} deterministic episodes:")
    print(
        f"  robot_sac up ({args.robots} robots): mean return {means['ours']:9.1f}"
        f"   (version {newest.version}, {newest.updates:,} updates, {logged:,} transitions)"
    )
    print(f"  SB3 SAC in-process:        mean return {means['sb3']:9.1f}")
    verdict = "met" if means["ours"] >= means["sb3"] else "NOT met"
    print(f"goal: at least SB3's return at the same step count -> {verdict}")
    payload = {
        "benchmark": "long_run",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env": args.env,
        "steps": args.steps,
        "robots": args.robots,
        "episodes": args.episodes,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "ours": {
            "returns": results["ours"],
            "mean": means["ours"],
            "version": newest.version,
            "updates": newest.updates,
            "transitions": logged,
            "wall_s": wall_ours,
        },
        "sb3": {
            "returns": results["sb3"],
            "mean": means["sb3"],
            "train_s": float((work / "sb3.seconds").read_text()),
        },
    }
    out = ROOT / "bench" / "results" / f"long_run_{args.env}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
