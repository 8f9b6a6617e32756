"""What the learner's options cost: SAC updates per second with each, against the defaults.

The options for learning from demonstrations at high update-to-data ratios (LayerNorm in the
critics, an ensemble of 10 critics with REDQ's random-pair target, half of each batch from the
prior rows, and all three together as RLPD runs them) change the work of one update. This times
them side by side in one run, at the shapes of bench/learner_throughput.py (HalfCheetah's 17
observations and 6 actions, (256, 256) networks, batch 256): rounds alternate the order of the
variants so that a noisy machine slows all of them alike, and the figures to read are the median
ratios to the defaults within a round. The robot steps per second each one affords at an
update-to-data ratio of 20 (REDQ's and RLPD's) follow from its rate.

    python bench/learner_options.py                     # CPU, all cores, about a minute
    python bench/learner_options.py --device cuda       # adds each option as a CUDA graph

Writes ``bench/results/learner_options_<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench.learner_throughput import ACTION_DIM, BATCH, FILL, HIDDEN, OBS_DIM, rate
from bench.learner_throughput import random_transitions as transitions
from robot_sac.config import SACConfig
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC

PRIOR_FRACTION = 0.1  # of the buffer's rows flagged prior (demonstrations, corrections)
UTD = 20

VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "layer_norm": {"critic_layer_norm": True},
    "redq_10_critics": {"num_critics": 10, "critic_subset": 2},
    "prior_share_0.5": {"prior_share": 0.5},
    "rlpd_all_three": {
        "critic_layer_norm": True,
        "num_critics": 10,
        "critic_subset": 2,
        "prior_share": 0.5,
    },
}


def learner(
    device: torch.device, options: dict[str, object], data: dict[str, np.ndarray]
) -> tuple[SAC, ReplayBuffer]:
    cfg = SACConfig.model_validate({"hidden": HIDDEN, "batch_size": BATCH, **options})
    torch.manual_seed(0)
    sac = SAC(OBS_DIM, ACTION_DIM, cfg, device=device)
    replay = ReplayBuffer(FILL, OBS_DIM, ACTION_DIM, device=device)
    prior = np.random.default_rng(1).random(FILL) < PRIOR_FRACTION
    replay.add(**data, prior=prior)
    return sac, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=8, help="alternating timing rounds")
    parser.add_argument("--updates", type=int, default=0, help="updates per round (0: auto)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    updates = args.updates or (25 if device.type == "cpu" else 500)
    data = transitions(FILL)

    variants: dict[str, Callable[[int], object]] = {}
    for name, options in VARIANTS.items():
        sac, replay = learner(device, options, data)

        def run(n: int, sac: SAC = sac, replay: ReplayBuffer = replay) -> None:
            for _ in range(n):
                sac.update(replay.sample(BATCH, prior_share=sac.cfg.prior_share))

        variants[name] = run
    if device.type == "cuda":
        from robot_sac.cuda_graphs import GraphedUpdate

        for name, options in VARIANTS.items():
            graphed = GraphedUpdate(*learner(device, options, data))
            variants[f"{name}_cuda_graph"] = lambda n, g=graphed: [g() for _ in range(n)]

    for fn in variants.values():  # warm-up: optimiser state, allocator, kernels
        fn(max(5, updates // 5))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # each first in turn
        if r % 2:
            order.reverse()
        for name in order:
            rates[name].append(rate(variants[name], updates, device))
        line = "  ".join(f"{k} {v[-1]:7.1f}" for k, v in rates.items())
        print(f"round {r + 1}/{args.rounds}: updates/s  {line}", flush=True)

    def baseline(name: str) -> str:
        return "default_cuda_graph" if name.endswith("_cuda_graph") else "default"

    median = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {
        k: statistics.median(a / b for a, b in zip(v, rates[baseline(k)], strict=True))
        for k, v in rates.items()
    }
    print()
    print(f"device {device}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'variant':30s} {'updates/s':>10s} {'vs default':>11s} {'steps/s at utd 20':>18s}")
    for k, v in median.items():
        print(f"{k:30s} {v:10.1f} {ratios[k]:10.2f}x {v / UTD:18.1f}")

    result = {
        "benchmark": "learner_options",
        "command": "python bench/learner_options.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "shapes": {"obs": OBS_DIM, "action": ACTION_DIM, "hidden": list(HIDDEN), "batch": BATCH},
        "prior_fraction_of_buffer": PRIOR_FRACTION,
        "options": VARIANTS,
        "updates_per_round": updates,
        "rates": rates,
        "median_updates_per_s": median,
        "ratio_vs_default": ratios,
        f"robot_steps_per_s_at_utd_{UTD}": {k: v / UTD for k, v in median.items()},
    }
    out = args.out or Path(__file__).parent / "results" / f"learner_options_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
