"""Serving latency and throughput of /v1/act, against a bare echo app in the same run.

Four measurements, HalfCheetah's sizes (17 observations, 6 actions, a 256x256 policy):

1. one robot, sequential, keep-alive: p50 and p99 of /v1/act against a bare uvicorn app that
   answers a fixed JSON body (same uvicorn, same loop and HTTP parser), in alternating blocks;
   goal: at most 0.4 ms p50 and 1.5 ms p99 over the echo;
2. 32 robots acting at 50 Hz each, open loop (1,600 actions/s offered, latency counted from
   each request's scheduled time, so a stall cannot hide): goal p99 <= 20 ms, 0 errors;
3. the same 32 robots closed loop (each asks again as soon as it is answered), with
   micro-batching on and off: goal >= 3x the actions/s of batching off;
4. swap under load: 32 robots at 50 Hz while >= 50 versions are published to the store; time
   from each publish to the first answer naming it; goal <= 1 s, 0 failed requests.

The client is a minimal HTTP/1.1 client over raw sockets, so its own overhead is small and the
same for both servers. The servers run as separate processes.

    python bench/serve_latency.py            # about 3 minutes
    python bench/serve_latency.py --quick    # a smoke run

Writes ``bench/results/serve_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from robot_sac import processes

ROOT = Path(__file__).resolve().parent.parent
OBS_DIM, ACTION_DIM = 17, 6


# --- servers (started, waited for and stopped by robot_sac.processes) ------------------------
free_port = processes.free_port  # bench/hostile.py takes it from here


class Server:
    """``cmd`` serving on ``port`` from the checkout's root; ready once ``ready_path`` answers
    200. Its output goes to a log file in the temporary folder, quoted if it fails to start."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, env: dict[str, str]) -> None:
        self.port = port
        self.log = Path(tempfile.gettempdir()) / f"robot-sac-bench-server-{port}.log"
        self.log.write_bytes(b"")
        self.proc = processes.spawn_command(cmd, self.log, env, cwd=ROOT)
        try:
            processes.wait_ready(f"http://127.0.0.1:{port}", self.proc, self.log, 60, ready_path)
        except processes.NotReady as exc:
            processes.kill(self.proc)
            raise RuntimeError(f"{exc}\n{self.log.read_text(errors='replace')}") from None

    def stop(self) -> None:
        processes.stop(self.proc, 20)


def start_echo() -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.echo_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return Server(cmd, port, "/", {**os.environ, "PYTHONPATH": str(ROOT)})


def write_task(path: Path) -> Path:
    task = {
        "name": "cheetah",
        "obs_dim": OBS_DIM,
        "action_low": [-1.0] * ACTION_DIM,
        "action_high": [1.0] * ACTION_DIM,
    }
    path.write_text(json.dumps(task))
    return path


def start_service(data_dir: Path, task: Path, **flags: Any) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "robot_sac.cli",
        "serve",
        "--task",
        str(task),
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--device",
        "cpu",
    ]
    for k, v in flags.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return Server(cmd, port, "/readyz", dict(os.environ))


# --- a lean HTTP/1.1 client -------------------------------------------------------------------
def act_request(obs: list[float]) -> bytes:
    body = json.dumps({"obs": obs}).encode()
    return (
        b"POST /v1/act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def split_response(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """(status, body, rest) if ``buf`` holds a whole response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next(
        int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length")
    )
    if len(buf) < end + 4 + length:
        return None
    return status, buf[end + 4 : end + 4 + length], buf[end + 4 + length :]


class Conn:
    """A blocking keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, data: bytes) -> tuple[int, bytes]:
        self.sock.sendall(data)
        while True:
            parsed = split_response(self.buf)
            if parsed is not None:
                status, body, self.buf = parsed
                return status, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


async def async_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length")
    )
    return status, await reader.readexactly(length)


# --- measurements -------------------------------------------------------------------------------
def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": len(xs),
    }


def sequential(echo: Server, ours: Server, blocks: int, per_block: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    requests = [act_request(rng.standard_normal(OBS_DIM).round(6).tolist()) for _ in range(256)]
    lat: dict[str, list[float]] = {"echo": [], "ours": []}
    conns = {"echo": Conn(echo.port), "ours": Conn(ours.port)}
    for conn in conns.values():  # warm-up
        for i in range(200):
            conn.request(requests[i % 256])
    for b in range(blocks):
        order = ["echo", "ours"] if b % 2 == 0 else ["ours", "echo"]
        for name in order:
            conn = conns[name]
            for i in range(per_block):
                t0 = time.perf_counter()
                status, _ = conn.request(requests[i % 256])
                lat[name].append(time.perf_counter() - t0)
                assert status == 200
    for conn in conns.values():
        conn.close()
    out = {k: percentiles(v) for k, v in lat.items()}
    out["over_echo_p50_ms"] = out["ours"]["p50_ms"] - out["echo"]["p50_ms"]
    out["over_echo_p99_ms"] = out["ours"]["p99_ms"] - out["echo"]["p99_ms"]
    return out


async def fleet(
    port: int,
    robots: int,
    seconds: float,
    rate_hz: float | None,
    seen: list[tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """``robots`` connections; open loop at ``rate_hz`` each, or closed loop if None."""
    rng = np.random.default_rng(1)
    requests = [act_request(rng.standard_normal(OBS_DIM).round(6).tolist()) for _ in range(64)]
    latencies: list[float] = []
    errors = 0
    done = 0
    start = time.perf_counter() + 0.5

    async def robot(i: int) -> None:
        nonlocal errors, done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        k = 0
        phase = i / (robots * rate_hz) if rate_hz else 0.0
        while True:
            scheduled = start + phase + (k / rate_hz if rate_hz else 0.0)
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            sent = scheduled if rate_hz else time.perf_counter()
            if sent - start > seconds:
                break
            try:
                status, body = await async_request(reader, writer, requests[(i + k) % 64])
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                break
            t = time.perf_counter()
            if status != 200:
                errors += 1
            else:
                latencies.append(t - sent)
                done += 1
                if seen is not None:
                    seen.append((time.time(), json.loads(body)["policy_version"]))
            k += 1
        writer.close()

    await asyncio.gather(*(robot(i) for i in range(robots)))
    return {
        **percentiles(latencies),
        "actions_per_s": done / seconds,
        "errors": errors,
        "offered_per_s": robots * rate_hz if rate_hz else None,
    }


def swap_under_load(
    service: Server, data_dir: Path, task: Path, swaps: int, robots: int
) -> dict[str, Any]:
    import torch

    from robot_sac.networks import Actor
    from robot_sac.policy import policy_bytes
    from robot_sac.schemas import TaskSpec
    from robot_sac.store import open_store

    spec = TaskSpec.model_validate_json(task.read_text())
    store = open_store(spec, data_dir)
    seen: list[tuple[float, int]] = []
    published: dict[int, float] = {}
    seconds = swaps * 0.6 + 3.0

    def publisher() -> None:
        time.sleep(1.0)
        for k in range(swaps):
            torch.manual_seed(k)
            data = policy_bytes(
                Actor(OBS_DIM, ACTION_DIM), [-1.0] * ACTION_DIM, [1.0] * ACTION_DIM, 0
            )
            t = time.time()
            record = store.register_policy(data)
            published[record.version] = t
            time.sleep(0.6)

    thread = threading.Thread(target=publisher)
    thread.start()
    result = asyncio.run(fleet(service.port, robots, seconds, 50.0, seen))
    thread.join()
    store.close()
    delays = []
    for version, t_pub in published.items():
        first = next((t for t, v in seen if v >= version), None)
        if first is not None:
            delays.append(first - t_pub)
    return {
        "versions_published": len(published),
        "versions_seen": len(delays),
        "publish_to_served_ms": {
            "median": 1e3 * statistics.median(delays) if delays else None,
            "max": 1e3 * max(delays) if delays else None,
        },
        "errors": result["errors"],
        "act": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--robots", type=int, default=32)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "serve_latency.json"
    )
    args = parser.parse_args()
    q = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    task = write_task(tmp / "task.json")
    results: dict[str, Any] = {
        "benchmark": "serve_latency",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    started: list[Server] = []  # stopped on any exit, Ctrl-C included
    try:
        echo = start_echo()
        started.append(echo)
        ours = start_service(tmp / "batched", task)
        started.append(ours)
        try:
            print("1. one robot, sequential, keep-alive", flush=True)
            seq = sequential(echo, ours, blocks=4 if q else 10, per_block=250 if q else 1000)
            results["sequential"] = seq
            print(f"   echo p50 {seq['echo']['p50_ms']:.3f} ms  p99 {seq['echo']['p99_ms']:.3f} ms")
            print(f"   ours p50 {seq['ours']['p50_ms']:.3f} ms  p99 {seq['ours']['p99_ms']:.3f} ms")
            print(
                f"   over the echo: p50 +{seq['over_echo_p50_ms']:.3f} ms (goal <= 0.4), "
                f"p99 +{seq['over_echo_p99_ms']:.3f} ms (goal <= 1.5)"
            )

            print(f"2. {args.robots} robots at 50 Hz, open loop", flush=True)
            open_loop = asyncio.run(fleet(ours.port, args.robots, 4.0 if q else 15.0, 50.0))
            results["open_loop_50hz"] = open_loop
            ol = open_loop
            print(
                f"   {ol['actions_per_s']:.0f} actions/s of {ol['offered_per_s']:.0f} offered;",
                f"p50 {ol['p50_ms']:.2f} ms, p99 {ol['p99_ms']:.2f} ms (goal <= 20),",
                f"errors {ol['errors']}",
            )
        finally:
            echo.stop()

        unbatched = start_service(tmp / "unbatched", task, max_batch_size=1)
        started.append(unbatched)
        try:
            print(f"3. {args.robots} robots, closed loop: batching on vs off", flush=True)
            rounds: dict[str, list[float]] = {"on": [], "off": []}
            for r in range(2 if q else 4):
                for name in ["on", "off"] if r % 2 == 0 else ["off", "on"]:
                    server = ours if name == "on" else unbatched
                    res = asyncio.run(fleet(server.port, args.robots, 3.0 if q else 6.0, None))
                    rounds[name].append(res["actions_per_s"])
            on, off = statistics.median(rounds["on"]), statistics.median(rounds["off"])
            results["closed_loop"] = {
                "batching_on": rounds["on"],
                "batching_off": rounds["off"],
                "ratio": on / off,
            }
            print(f"   on {on:.0f} actions/s, off {off:.0f} actions/s: {on / off:.2f}x (goal >= 3)")
        finally:
            unbatched.stop()

        try:
            swaps = 10 if q else 50
            print(
                f"4. swap under load: {swaps} versions published while {args.robots} robots act",
                flush=True,
            )
            swap = swap_under_load(ours, tmp / "batched", task, swaps, args.robots)
            results["swap_under_load"] = swap
            p = swap["publish_to_served_ms"]
            print(
                f"   {swap['versions_seen']}/{swap['versions_published']} versions seen;",
                f"publish to first answer: median {p['median']:.0f} ms, max {p['max']:.0f} ms",
                f"(goal <= 1000); failed requests {swap['errors']}",
            )
        finally:
            ours.stop()

    finally:
        for server in started:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
