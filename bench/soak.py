"""A long run of the whole service: 32 robots and a learner publishing every few seconds.

``robot-sac serve`` (with tokens) and ``robot-sac learn`` run as processes on one data directory;
a third process runs 32 robots, each acting at ``--rate-hz`` over its own keep-alive connection
(open loop: latency is counted from each act's scheduled time, so a stall cannot hide) and logging
its transitions in batches of 50 on the same connection. Observations and rewards are random:
the point is the service's behaviour over time, not learning. The learner publishes a version
every 3 s, so the service swaps policies all along.

Goals: 0 errors; the service's RSS grows less than 50 MB after the first minute; the p99 act
latency of the last minute is within 1.5x of the first minute's.

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --minutes 1     # a shorter run

Writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench.hostile import OPERATOR_TOKEN, ROBOT_TOKEN, request, rss_mb, start_service
from bench.serve_latency import ACTION_DIM, OBS_DIM, Conn, async_request
from robot_sac import processes

ROOT = Path(__file__).resolve().parent.parent
BATCH = 50
EPISODE = 200


def write_task(path: Path) -> Path:
    """HalfCheetah's sizes; a small network so that the learner leaves the service a core."""
    task = {
        "name": "soak",
        "obs_dim": OBS_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
        "sac": {"hidden": [64, 64], "batch_size": 64, "learning_starts": 1000},
    }
    path.write_text(json.dumps(task))
    return path


def robots(port: int, count: int, rate_hz: float, seconds: float, out: Any) -> None:
    """Run ``count`` robots for ``seconds``; put ``(act_times, latencies, errors, logged)``."""

    async def robot(i: int) -> tuple[list[float], list[float], list[str], int]:
        rng = np.random.default_rng(i)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        times: list[float] = []
        latencies: list[float] = []
        errors: list[str] = []
        pending: list[dict[str, Any]] = []
        logged = 0
        start = time.perf_counter() + 1.0 + i / (count * rate_hz)
        obs = rng.standard_normal(OBS_DIM).round(5).tolist()
        k = 0
        while True:
            scheduled = start + k / rate_hz
            if scheduled - start > seconds:
                break
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            try:
                status, body = await asyncio.wait_for(
                    async_request(reader, writer, request("/v1/act", {"obs": obs}, ROBOT_TOKEN)),
                    10.0,
                )
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                errors.append(f"act: {type(exc).__name__}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                k += 1
                continue
            if status != 200:
                errors.append(f"act: HTTP {status} {body[:200]!r}")
                k += 1
                continue
            times.append(scheduled)
            latencies.append(time.perf_counter() - scheduled)
            answer = json.loads(body)
            next_obs = rng.standard_normal(OBS_DIM).round(5).tolist()
            pending.append(
                {
                    "robot_id": f"soak-{i}",
                    "episode_id": f"e{k // EPISODE}",
                    "step": k % EPISODE,
                    "obs": obs,
                    "action": answer["action"],
                    "reward": float(rng.standard_normal()),
                    "next_obs": next_obs,
                    "terminated": False,
                    "truncated": k % EPISODE == EPISODE - 1,
                    "policy_version": answer["policy_version"],
                }
            )
            obs = next_obs
            k += 1
            if len(pending) >= BATCH:
                data = request("/v1/transitions", {"transitions": pending}, ROBOT_TOKEN)
                try:
                    status, body = await asyncio.wait_for(async_request(reader, writer, data), 30)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                    errors.append(f"transitions: {type(exc).__name__}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                if status != 200:
                    errors.append(f"transitions: HTTP {status} {body[:200]!r}")
                else:
                    logged += json.loads(body)["accepted"]
                pending = []
        writer.close()
        return times, latencies, errors, logged

    async def run() -> list[Any]:
        return await asyncio.gather(*(robot(i) for i in range(count)))

    results = asyncio.run(run())
    out.put(
        (
            [t for r in results for t in r[0]],
            [x for r in results for x in r[1]],
            [e for r in results for e in r[2]],
            sum(r[3] for r in results),
        )
    )


def per_minute(times: list[float], latencies: list[float]) -> list[dict[str, float]]:
    t, lat = np.asarray(times), np.asarray(latencies) * 1e3
    t0, minutes = t.min(), []
    for m in range(int((t.max() - t0) // 60) + 1):
        sel = lat[(t >= t0 + 60 * m) & (t < t0 + 60 * (m + 1))]
        if len(sel) > 100:
            minutes.append(
                {
                    "minute": m + 1,
                    "acts": len(sel),
                    "p50_ms": float(np.percentile(sel, 50)),
                    "p99_ms": float(np.percentile(sel, 99)),
                }
            )
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--robots", type=int, default=32)
    parser.add_argument("--rate-hz", type=float, default=20.0, help="acts per second per robot")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.json")
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        task = write_task(Path(tmp) / "task.json")
        data_dir = Path(tmp) / "data"
        service = start_service(data_dir, task)
        learner_env = {
            **os.environ,
            "ROBOT_SAC_PUBLISH_SECONDS": "3",
            "ROBOT_SAC_PUBLISH_EVERY": "1000000000",
            "ROBOT_SAC_LEARNER_THREADS": "1",
            "ROBOT_SAC_DEVICE": "cpu",
        }
        learner_args = ["learn", "--task", str(task), "--data-dir", str(data_dir), "--no-progress"]
        learner = processes.spawn(
            [*learner_args, "--log-level", "warning"],
            Path(tmp) / "learner.log",
            learner_env,
            cwd=ROOT,
        )
        out: Any = mp.Queue()
        fleet = mp.Process(
            target=robots, args=(service.port, args.robots, args.rate_hz, seconds, out)
        )
        print(
            f"{args.robots} robots at {args.rate_hz:g} Hz and a learner publishing every 3 s, "
            f"for {args.minutes:g} min"
        )
        fleet.start()
        rss: list[tuple[float, float]] = []
        start = time.monotonic()
        printed = -1
        try:
            # The fleet's results arrive on the queue (a process that has put data on a queue
            # only exits once it has been read); sample the service's RSS meanwhile.
            while True:
                elapsed = time.monotonic() - start
                rss.append((elapsed, rss_mb(service.proc.pid)))
                if int(elapsed // 60) > printed:
                    printed = int(elapsed // 60)
                    print(f"   {elapsed / 60:.1f} min: service RSS {rss[-1][1]:.0f} MB")
                try:
                    times, latencies, errors, logged = out.get(timeout=5)
                    break
                except queue.Empty:
                    if not fleet.is_alive() or elapsed > seconds + 300:
                        raise RuntimeError("the robots' process ended without results") from None
            fleet.join(30)
            operator = Conn(service.port)
            _, body = operator.request(
                f"GET /v1/admin/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {OPERATOR_TOKEN}\r\n\r\n".encode()
            )
            status = json.loads(body)
            operator.close()
        finally:
            processes.stop(learner, 60)
            service.stop()
    minutes = per_minute(times, latencies)
    after_first = [m for t, m in rss if t >= 60]
    rss_first_minute = after_first[0] if after_first else rss[-1][1]
    growth = max(after_first, default=rss_first_minute) - rss_first_minute
    ratio = minutes[-1]["p99_ms"] / minutes[0]["p99_ms"]
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": ".venv/bin/python bench/soak.py"
        + (f" --minutes {args.minutes:g}" if args.minutes != 10 else ""),
        "robots": args.robots,
        "rate_hz": args.rate_hz,
        "minutes": args.minutes,
        "acts": len(latencies),
        "transitions_logged": logged,
        "errors": len(errors),
        "error_examples": errors[:10],
        "versions_published": status.get("latest_version"),
        "served_version_at_end": status.get("served_version"),
        "learner_updates": (status.get("learner") or {}).get("updates"),
        "per_minute": minutes,
        "p99_last_over_first": ratio,
        "rss_mb": [round(m, 1) for _, m in rss],
        "rss_mb_after_first_minute": rss_first_minute,
        "rss_growth_mb": growth,
        "goals": {"errors": 0, "rss_growth_mb": 50.0, "p99_last_over_first": 1.5},
        "met": not errors and growth < 50.0 and ratio <= 1.5,
    }
    for m in minutes:
        print(
            f"   minute {m['minute']}: {m['acts']} acts, p50 {m['p50_ms']:.2f} ms, "
            f"p99 {m['p99_ms']:.2f} ms"
        )
    print(
        f"{len(latencies)} acts, {logged} transitions, {len(errors)} errors; RSS +{growth:.1f} MB "
        f"after the first minute; p99 last/first {ratio:.2f}; "
        f"{result['versions_published']} versions published"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
