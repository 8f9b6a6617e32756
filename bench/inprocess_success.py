"""Our SAC alone, in one process: success on the Panda reach task after a number of steps.

``bench/learning_curves.py`` runs the whole loop (service, learner, robots over HTTP); this runs
only the algorithm (``robot_sac.train_local``: uniform random actions for ``learning_starts``
steps, then one update per step), so that a change to the update can be judged without the
loop's noise and at about 35 s per seed. Each seed trains for ``--steps`` environment steps with
the shipped settings of the task, then its deterministic policy is scored on ``--episodes``
episodes with seeds no run uses (the same seeds as ``bench/learning_curves.py``).

    python bench/inprocess_success.py                     # 12 seeds, 2,000 steps, 2 at a time
    python bench/inprocess_success.py --seeds 22 --jobs 2 --out /tmp/base.json

Seeds are reproducible (one torch thread each): a change is best judged on the same seeds,
paired. Writes ``bench/results/inprocess_success.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_seed(env_id: str, seed: int, steps: int, episodes: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from robot_sac.sim.envs import make_env, task_spec
    from robot_sac.train_local import EVAL_SEED, ActionScaler, rollout, train_local

    torch.set_num_threads(1)
    spec = task_spec(env_id)
    env, eval_env = make_env(env_id), make_env(env_id)
    start = time.perf_counter()
    try:
        result = train_local(env, spec, steps, seed=seed, progress=False)
        scale = ActionScaler(spec)

        def act(obs: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
            return scale.to_robot(result.sac.act(x, deterministic=True)[0].numpy())

        rate = float(np.mean([e.success for e in rollout(act, eval_env, episodes, EVAL_SEED)]))
    finally:
        env.close()
        eval_env.close()
    return {"seed": seed, "success": rate, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="PandaReachDense-v3")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per seed")
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (processes)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "inprocess_success.json"
    )
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 1 or args.jobs < 1:
        parser.error("--seeds, --steps and --jobs must be positive")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_seed, args.env, s, args.steps, args.episodes) for s in seeds]
        for future in futures:
            run = future.result()
            runs.append(run)
            print(
                f"seed {run['seed']:3d}: success {run['success']:4.0%}  ({run['seconds']:.0f} s)",
                flush=True,
            )
    rates = [r["success"] for r in runs]
    mean = statistics.mean(rates)
    se = statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else None
    spread = "" if se is None else f" ± {se:.1%} (standard error)"
    print(f"{args.env}, {args.steps} steps, {len(rates)} seeds: success {mean:.1%}{spread}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "inprocess_success",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env": args.env,
        "steps": args.steps,
        "episodes": args.episodes,
        "mean": mean,
        "standard_error": se,
        "runs": runs,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
