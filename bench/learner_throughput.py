"""SAC updates per second: our update against Stable-Baselines3's, side by side in one run.

Same networks (256, 256), batch 256, HalfCheetah's sizes (17 observations, 6 actions), same torch
thread count. The two are timed in alternating rounds so that a noisy machine slows both alike; the
figure to read is the median ratio. The same run times a dense matmul to estimate the machine's
FLOP rate, counts the FLOPs of one update (torch's FlopCounterMode) and prints our rate as a
fraction of that roofline.

    python bench/learner_throughput.py                       # CPU, all cores
    python bench/learner_throughput.py --device cuda         # adds the CUDA-graph variants

Writes ``bench/results/learner_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from robot_sac.config import SACConfig
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC

OBS_DIM, ACTION_DIM, HIDDEN, BATCH, FILL = 17, 6, (256, 256), 256, 50_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_transitions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((n, OBS_DIM), dtype=np.float32),
        "action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
        "reward": rng.standard_normal(n, dtype=np.float32),
        "next_obs": rng.standard_normal((n, OBS_DIM), dtype=np.float32),
        "terminated": (rng.random(n) < 0.01).astype(np.float32),
    }


def ours(device: torch.device, data: dict[str, np.ndarray]) -> tuple[SAC, ReplayBuffer]:
    sac = SAC(OBS_DIM, ACTION_DIM, SACConfig(hidden=HIDDEN, batch_size=BATCH), device=device)
    replay = ReplayBuffer(FILL, OBS_DIM, ACTION_DIM, device=device)
    replay.add(**data)
    return sac, replay


def sb3(device: torch.device, data: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    import gymnasium as gym
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.logger import configure

    class Dummy(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    model = SB3SAC(
        "MlpPolicy",
        Dummy(),
        batch_size=BATCH,
        buffer_size=FILL,
        learning_starts=0,
        policy_kwargs={"net_arch": list(HIDDEN)},
        device=device,
        seed=0,
    )
    model.set_logger(configure(folder=None, format_strings=[]))
    rb = model.replay_buffer
    rb.observations[:, 0] = data["obs"]
    rb.actions[:, 0] = data["action"]
    rb.rewards[:, 0] = data["reward"]
    rb.next_observations[:, 0] = data["next_obs"]
    rb.dones[:, 0] = data["terminated"]
    rb.full = True
    return model


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, n: int, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def rate(fn: Callable[[int], object], updates: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn(updates)
    sync(device)
    return updates / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=20, help="alternating timing rounds")
    parser.add_argument("--updates", type=int, default=0, help="updates per round (0: auto)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Short rounds, many of them, in ABBA order: the machine's speed drifts on a scale of seconds,
    # and a ratio taken within one round cancels most of that drift.
    updates = args.updates or (60 if device.type == "cpu" else 500)
    torch.manual_seed(0)
    data = random_transitions(FILL)

    sac, replay = ours(device, data)
    model = sb3(device, data)

    def run_ours(n: int) -> None:
        for _ in range(n):
            sac.update(replay.sample(BATCH))

    variants: dict[str, Callable[[int], object]] = {
        "sb3": lambda n: model.train(gradient_steps=n, batch_size=BATCH),
        "ours": run_ours,
    }
    if device.type == "cuda":
        from robot_sac.cuda_graphs import GraphedUpdate

        graphed = GraphedUpdate(*ours(device, data))
        variants["ours_cuda_graph"] = lambda n: [graphed() for _ in range(n)]
        try:
            compiled = GraphedUpdate(*ours(device, data), compile=True)
            variants["ours_compiled_cuda_graph"] = lambda n: [compiled() for _ in range(n)]
        except Exception as exc:  # compile is optional: report, don't fail the benchmark
            print(f"torch.compile variant unavailable: {exc!r}")

    flops_ours = count_flops(lambda: sac.update(replay.sample(BATCH)))
    flops_sb3 = count_flops(lambda: model.train(gradient_steps=1, batch_size=BATCH))
    for fn in variants.values():  # warm-up
        fn(max(10, updates // 10))

    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            rates[name].append(rate(variants[name], updates, device))
        line = "  ".join(f"{k} {v[-1]:8.1f}" for k, v in rates.items())
        print(f"round {r + 1}/{args.rounds}: updates/s  {line}", flush=True)

    flops_rate = matmul_flops_per_s(device, 1024 if device.type == "cpu" else 4096)
    roofline = flops_rate / flops_ours
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {
        k: statistics.median(a / b for a, b in zip(v, rates["sb3"], strict=True))
        for k, v in rates.items()
        if k != "sb3"
    }
    best = max(ratios, key=lambda k: ratios[k])
    print()
    print(f"device {device}, torch {torch.__version__}, {args.threads} threads")
    print(f"dense matmul: {flops_rate / 1e9:.1f} GFLOP/s")
    print(f"FLOPs per update: ours {flops_ours / 1e6:.0f} M, SB3 {flops_sb3 / 1e6:.0f} M")
    print(f"roofline (matmul rate / our FLOPs): {roofline:.0f} updates/s")
    for k, v in median.items():
        extra = f"  {ratios[k]:.2f}x SB3" if k in ratios else ""
        print(f"{k:26s} {v:9.1f} updates/s  {v / roofline:6.1%} of roofline{extra}")
    print(f"best: {best}, {ratios[best]:.2f}x Stable-Baselines3 (median of per-round ratios)")

    result = {
        "benchmark": "learner_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "shapes": {"obs": OBS_DIM, "action": ACTION_DIM, "hidden": list(HIDDEN), "batch": BATCH},
        "updates_per_round": updates,
        "rates": rates,
        "median_updates_per_s": median,
        "ratio_vs_sb3": ratios,
        "matmul_flops_per_s": flops_rate,
        "flops_per_update": {"ours": flops_ours, "sb3": flops_sb3},
        "roofline_updates_per_s": roofline,
        "fraction_of_roofline": {k: v / roofline for k, v in median.items()},
    }
    out = args.out or Path(__file__).parent / "results" / f"learner_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
