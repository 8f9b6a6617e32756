"""Sample efficiency at equal environment steps: Stable-Baselines3's SAC against our loop's options.

Protocol, fixed before measuring: each variant trains for ``--steps`` environment steps in all
(demonstration and intervention steps count: they cost robot time too), seeds ``first-seed ...
first-seed + seeds - 1``; then the final policy's deterministic success is scored on
``--episodes`` episodes whose seeds no run used. Variants:

- ``sb3``: SB3's SAC in one process, with the task's tuned settings (``robot_sac.config.TUNED``;
  for the Panda tasks RL Zoo has no SAC settings), (256, 256) networks, and as many gradient
  steps after each step as the task's update-to-data ratio (two on the reach, one on the push).
- ``ours``: ``robot-sac up`` with its defaults (service, learner process, 2 robots over HTTP).
- ``ours_demos``: ``robot-sac up`` with the scripted expert (see ``DEMO_OPTIONS``): on the reach
  ``--demos 10 --sac '{"utd": 3}'`` (ten demonstrations first, half of each batch from them as
  in RLPD, three updates per step); on the push ``--demos 20 --intervene 0.2 --sac '{"utd": 2,
  "critic_layer_norm": true}'`` (twenty demonstrations, the expert takes over a struggling
  episode with probability 0.2, LayerNorm critics, two updates per step).

    python bench/sample_efficiency.py                          # PandaReachDense-v3, 2,000 steps
    python bench/sample_efficiency.py --variants ours ours_demos --seeds 5
    python bench/sample_efficiency.py --env PandaPushDense-v3 --steps 30000 \
        --variants ours_demos sb3 --seeds 5

Writes ``bench/results/sample_efficiency_<env>_<steps>.json``. Runs go one at a time: success at
equal steps does not depend on speed, but a loaded machine makes every run slower.
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
from learning_curves import ROOT, sb3_sac, standard_error, up_command

from robot_sac.policy import load_policy
from robot_sac.sim.envs import make_env
from robot_sac.store import open_existing
from robot_sac.train_local import EVAL_SEED, rollout

DEMO_OPTIONS = {
    "PandaReachDense-v3": ["--demos", "10", "--sac", '{"utd": 3}'],
    "PandaPushDense-v3": [
        *("--demos", "20", "--intervene", "0.2"),
        *("--sac", '{"utd": 2, "critic_layer_norm": true}'),
    ],
}


# ``ours_sac``: ``robot-sac up --sac JSON`` with the JSON of ``--sac`` (to try settings)
TRIAL_SAC: list[str] = []


def up_options(env_id: str, variant: str) -> list[str]:
    """The ``robot-sac up`` options of ``variant`` on ``env_id``."""
    if variant == "ours_sac":
        return ["--sac", *TRIAL_SAC]
    return [] if variant == "ours" else DEMO_OPTIONS[env_id]


def score(env_id: str, act: Any, episodes: int) -> float:
    env = make_env(env_id)
    try:
        return float(np.mean([e.success for e in rollout(act, env, episodes, EVAL_SEED)]))
    finally:
        env.close()


def run_up(env_id: str, variant: str, seed: int, steps: int, episodes: int, work: Path) -> float:
    data = work / f"{variant}-{seed}"
    cmd = [*up_command(env_id, 2, steps, data, seed=seed * 10), *up_options(env_id, variant)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"robot-sac up failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    store = open_existing(data)
    try:
        record = store.latest_policy()
        assert record is not None
        pi = load_policy(store.policy_bytes(record), sha256=record.sha256)
    finally:
        store.close()
    return score(env_id, lambda o: pi.act(o, deterministic=True), episodes)


def run_sb3(env_id: str, seed: int, steps: int, episodes: int) -> float:
    torch.set_num_threads(1)
    model = sb3_sac(env_id, seed)
    model.learn(steps)
    return score(env_id, lambda o: model.predict(o, deterministic=True)[0], episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PandaReachDense-v3")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["sb3", "ours", "ours_demos"],
        choices=["sb3", "ours", "ours_demos", "ours_sac"],
    )
    parser.add_argument("--sac", help="the --sac JSON of the ours_sac variant")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: in bench/results)")
    args = parser.parse_args()
    if "ours_sac" in args.variants:
        if not args.sac:
            parser.error("the ours_sac variant needs --sac JSON")
        TRIAL_SAC.append(args.sac)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = args.out or ROOT / "bench" / "results" / f"sample_efficiency_{args.env}_{args.steps}.json"
    results: dict[str, Any] = {}

    def write() -> None:
        """The JSON so far (rewritten after every run: a long bench cut short keeps its runs)."""
        payload = {
            "date": dt.date.today().isoformat(),
            "command": " ".join(["python", "bench/sample_efficiency.py", *sys.argv[1:]]),
            "env": args.env,
            "steps": args.steps,
            "episodes": args.episodes,
            "seeds": seeds,
            "variants": {
                k: "SB3 SAC in-process" if k == "sb3" else up_options(args.env, k)
                for k in args.variants
            },
            "results": results,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            rates: list[float] = []
            walls: list[float] = []
            for seed in seeds:
                start = time.monotonic()
                if variant == "sb3":
                    rate = run_sb3(args.env, seed, args.steps, args.episodes)
                else:
                    rate = run_up(args.env, variant, seed, args.steps, args.episodes, Path(tmp))
                rates.append(rate)
                walls.append(time.monotonic() - start)
                print(f"{variant} seed {seed}: success {rate:.0%} ({walls[-1]:.0f} s)", flush=True)
                results[variant] = {
                    "success": rates,
                    "seeds_done": len(rates),
                    "wall_s": walls,
                    "mean": float(np.mean(rates)),
                    "standard_error": standard_error(rates) if len(rates) > 1 else None,
                }
                write()
            print(
                f"{variant}: {results[variant]['mean']:.0%} ± "
                f"{results[variant]['standard_error'] or 0:.0%} over {len(rates)} seeds",
                flush=True,
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
