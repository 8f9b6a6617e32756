"""The scripted experts alone: how often they solve their tasks, and in how many steps.

Each expert (``robot_sac.sim.experts``) drives ``--episodes`` episodes of its task, each reset
with its own seed (``--first-seed`` on), in real PyBullet physics, within the task's 50-step
limit; success is the env's own ``is_success`` at the episode's end. A second pass takes over
after ``--random-steps`` uniform random actions (the limit extended by as many), as an operator
grabbing the controls of a robot that went astray would. The tests (``tests/test_experts.py``)
check the same on 20 seeds; this is the figure the README quotes.

    python bench/experts.py                          # 300 episodes per task
    python bench/experts.py --episodes 50 --out /tmp/experts.json

Writes ``bench/results/experts.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("PandaReachDense-v3", "PandaPushDense-v3")


def run(env_id: str, seeds: range, random_steps: int) -> dict[str, Any]:
    from robot_sac.sim.envs import make_env
    from robot_sac.sim.experts import expert_for

    env = make_env(env_id, max_episode_steps=random_steps + 50)
    expert = expert_for(env_id)
    rng = np.random.default_rng(0)
    successes, lengths = [], []
    start = time.perf_counter()
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        steps = 0
        for t in range(random_steps + 50):
            if t < random_steps:
                action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            else:
                action, steps = expert(obs), steps + 1
            obs, _, terminated, truncated, info = env.step(action)
            if truncated or (terminated and t >= random_steps):
                break
        successes.append(bool(info["is_success"]))
        lengths.append(steps)
    env.close()
    return {
        "env": env_id,
        "random_steps": random_steps,
        "episodes": len(successes),
        "success": statistics.mean(successes),
        "mean_expert_steps": statistics.mean(lengths),
        "failed_seeds": [s for s, ok in zip(seeds, successes, strict=True) if not ok],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--random-steps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "experts.json")
    args = parser.parse_args()
    if args.episodes < 1 or args.random_steps < 0:
        parser.error("--episodes must be positive and --random-steps not negative")
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    results = []
    for env_id in TASKS:
        for random_steps in (0, args.random_steps):
            r = run(env_id, seeds, random_steps)
            results.append(r)
            after = f" after {random_steps} random steps" if random_steps else ""
            print(
                f"{env_id}{after}: success {r['success']:.1%} over {r['episodes']} episodes, "
                f"{r['mean_expert_steps']:.1f} expert steps on average ({r['seconds']:.0f} s)",
                flush=True,
            )
    payload = {
        "benchmark": "experts",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/experts.py "
        + f"--episodes {args.episodes} --first-seed {args.first_seed} "
        + f"--random-steps {args.random_steps}",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
