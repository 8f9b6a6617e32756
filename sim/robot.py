"""A simulated robot: a Gymnasium env driven through the service's HTTP API, like a real robot.

It asks the service for every action, logs every transition with :class:`RobotClient`, keeps a
control rate if asked to, and rides out a restart of the service: an act that cannot reach it is
retried until it comes back, and logged transitions wait in the client's queue meanwhile. It
imports only ``robot_sac.client`` and ``robot_sac.schemas`` of the core (and the env libraries).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from robot_sac.client import RobotClient, ServiceError
from robot_sac.sim.envs import make_env

if TYPE_CHECKING:
    from robot_sac.admin_schemas import StatusResponse

log = logging.getLogger("robot_sac.sim")


@dataclass(frozen=True)
class EpisodeReport:
    robot_id: str
    episode_id: str
    steps: int
    episode_return: float
    success: bool | None
    policy_version: int  # the version that chose most of the episode's actions


class Pacer:
    """Keeps robots at the learner's update-to-data ratio, as a real robot's control rate would.

    A robot waits while the log (with what it has queued) holds more than
    ``learning_starts + updates / utd + slack`` transitions: the learner is behind, and data it
    cannot use yet would come from a stale policy. Reads ``/v1/admin/status`` at most every
    ``period_s``, through ``reader`` (a client with a token that may read it) or ``client``.
    """

    def __init__(
        self,
        client: RobotClient,
        reader: RobotClient | None = None,
        slack: int = 20,
        period_s: float = 0.05,
    ) -> None:
        self.client, self.slack, self.period_s = client, slack, period_s
        self.reader = reader or client
        self._status: StatusResponse | None = None
        self._read_at = -1e9

    def wait(self) -> None:
        while True:
            if time.monotonic() - self._read_at >= self.period_s:
                self._status = self.reader.status()
                self._read_at = time.monotonic()
            status = self._status
            assert status is not None
            task, learner, logged = status.task, status.learner, status.transitions
            if task is None or learner is None or logged is None:
                return  # the service cannot read the store: nothing to pace by
            if task.utd <= 0:
                return  # the learner runs as fast as it can: nothing to pace
            allowed = task.learning_starts + learner.updates / task.utd + self.slack
            if logged + self.client.pending < allowed:
                return
            time.sleep(self.period_s)


def _act(
    client: RobotClient, obs: np.ndarray, deterministic: bool
) -> tuple[list[float], int, bool]:
    """Act, waiting for the service while it is away (a restart) or asks to be asked again later
    (429 over the token's rate, 503 a full act queue): robots keep their place."""
    delay = 0.05
    while True:
        try:
            return client.act(obs.tolist(), deterministic)
        except httpx.TransportError as exc:
            log.info("service unreachable (%s); retrying in %.2f s", type(exc).__name__, delay)
        except ServiceError as exc:
            if exc.status not in (429, 503):
                raise
            log.info("service busy (%d: %s); retrying in %.2f s", exc.status, exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def run_robot(
    url: str,
    env_id: str,
    robot_id: str,
    steps: int,
    seed: int = 0,
    rate_hz: float | None = None,
    token: str | None = None,
    pace: bool = False,
    status_token: str | None = None,
    on_episode: Callable[[EpisodeReport], None] | None = None,
    run_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[EpisodeReport]:
    """Drive ``env_id`` for ``steps`` environment steps through the service at ``url``.

    Episode ids carry ``run_id`` (fresh by default), so a second run logs new transitions.
    ``should_stop()`` ends the run early, after the current step; either way every logged
    transition is flushed before returning. Returns the reports of the episodes it finished.
    """
    env = make_env(env_id)
    run_id = run_id or uuid.uuid4().hex[:8]
    reports: list[EpisodeReport] = []
    # A paced robot stands in for in-process SAC, whose learner trains on every step at once:
    # send small batches promptly, so the learner is never kept waiting for data in our queue.
    client = (
        RobotClient(url, robot_id, token=token, batch_size=8, flush_interval_s=0.05)
        if pace
        else RobotClient(url, robot_id, token=token)
    )
    # The status is an operator's (or viewer's) route: a robot token may not read it.
    reader = RobotClient(url, robot_id, token=status_token) if pace and status_token else None
    pacer = Pacer(client, reader) if pace else None
    period = None if not rate_hz else 1.0 / rate_hz
    try:
        obs, _ = env.reset(seed=seed)
        obs = np.asarray(obs, np.float32)
        episode, t, total, versions = 0, 0, 0.0, []
        next_tick = time.monotonic()
        for _ in range(steps):
            if should_stop is not None and should_stop():
                break
            if pacer is not None:
                pacer.wait()
            if period is not None:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.monotonic()))
            action, version, _hold = _act(client, obs, deterministic=False)
            next_obs, reward, terminated, truncated, info = env.step(np.asarray(action, np.float32))
            next_obs = np.asarray(next_obs, np.float32)
            episode_id = f"{run_id}-{episode}"
            client.log(
                episode_id, t, obs, action, float(reward), next_obs, terminated, truncated, version
            )
            total += float(reward)
            versions.append(version)
            t += 1
            if terminated or truncated:
                success = info.get("is_success")
                report = EpisodeReport(
                    robot_id,
                    episode_id,
                    t,
                    total,
                    None if success is None else bool(success),
                    int(np.bincount(versions).argmax()),
                )
                reports.append(report)
                if on_episode is not None:
                    on_episode(report)
                obs, _ = env.reset()
                obs = np.asarray(obs, np.float32)
                episode, t, total, versions = episode + 1, 0, 0.0, []
            else:
                obs = next_obs
        client.flush()
    finally:
        client.close(timeout_s=60.0)
        if reader is not None:
            reader.close()
        env.close()
    return reports


def robot_process(kwargs: dict[str, Any], reports: Any, stop: Any) -> None:
    """Entry point of one robot process (``multiprocessing``): episode reports go to a queue.

    Ctrl-C in the terminal reaches every process of the group; a robot ignores it and stops
    when its parent sets ``stop``, so it can flush its transitions first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A robot reports through the queue; PyBullet's C library prints its build time to stdout
    # at exit, which would land in the middle of the parent's display.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    logging.basicConfig(level=logging.WARNING)
    run_robot(**kwargs, on_episode=reports.put, should_stop=stop.is_set)
    reports.put(None)  # this robot is done
