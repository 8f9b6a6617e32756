"""Several simulated robots, each in its own process with its own physics client."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from typing import Any

from robot_sac.sim.robot import EpisodeReport, robot_process


class Fleet:
    """``robots`` simulated robots acting on ``env_id`` through the service at ``url``.

    Robot ``i`` is named ``sim-<i>`` and seeded ``seed + i``; ``steps`` is per robot (None: run
    until stopped). Episode reports arrive through :meth:`reports`. ``token`` is the robot
    token; ``status_token`` (a viewer or operator token) reads the status that ``pace`` keeps
    to, when the service has tokens.

    ``demos`` demonstrations in all are shared out, as evenly as they go, between the robots
    (the first ``demos % robots`` take one more), each logging its share first; ``intervene``
    is every robot's chance per policy episode of the expert's taking over when it struggles
    (see :func:`robot_sac.sim.robot.run_robot`).
    """

    def __init__(
        self,
        url: str,
        env_id: str,
        robots: int,
        steps: int | None,
        seed: int = 0,
        rate_hz: float | None = None,
        token: str | None = None,
        pace: bool = False,
        status_token: str | None = None,
        demos: int = 0,
        intervene: float = 0.0,
    ) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter per robot: its own physics client
        self._ctx = ctx
        self._queue: Any = ctx.Queue()
        self._stop: Any = ctx.Event()
        self._configs = [
            {
                "url": url,
                "env_id": env_id,
                "robot_id": f"sim-{i}",
                "steps": steps if steps is not None else 2**62,
                "seed": seed + i,
                "rate_hz": rate_hz,
                "token": token,
                "pace": pace,
                "status_token": status_token,
                "demos": demos // robots + int(i < demos % robots),
                "intervene": intervene,
            }
            for i in range(robots)
        ]
        self._processes: list[Any] = []
        self._finished = 0

    def start(self) -> Fleet:
        # Robots die with their parent (Linux): a killed `up` or `sim` leaves none running. The
        # parent is, for Linux, the thread that starts them: only the main thread lives as long
        # as the command, so robots started from another thread are not tied to it.
        parent = os.getpid() if threading.current_thread() is threading.main_thread() else None
        self._processes = [
            self._ctx.Process(
                target=robot_process,
                args=(config, self._queue, self._stop, parent),
                name=f"robot-sac-sim-{i}",
                daemon=True,
            )
            for i, config in enumerate(self._configs)
        ]
        for p in self._processes:
            p.start()
        return self

    def reports(self) -> list[EpisodeReport]:
        """Episodes finished since the last call (never blocks)."""
        out: list[EpisodeReport] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if item is None:
                self._finished += 1
            else:
                out.append(item)

    @property
    def done(self) -> bool:
        """Every robot has taken its steps and flushed its transitions."""
        return self._finished == len(self._processes) or not any(
            p.is_alive() for p in self._processes
        )

    @property
    def failed(self) -> list[int]:
        """Exit codes of robots that crashed."""
        return [p.exitcode for p in self._processes if p.exitcode not in (None, 0)]

    def stop(self, timeout: float = 60.0) -> None:
        """Ask every robot to stop after its current step and flush; end stragglers (SIGTERM, then
        SIGKILL: they have had ``timeout`` s to flush)."""
        self._stop.set()
        for p in self._processes:
            p.join(timeout)
        for p in self._processes:
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
