"""A simulated robot: a Gymnasium env driven through the service's HTTP API, like a real robot.

It asks the service for every action, logs every transition with :class:`RobotClient`, keeps a
control rate if asked to, and rides out a restart of the service: an act that cannot reach it is
retried until it comes back, and logged transitions wait in the client's queue meanwhile. It
imports only ``robot_sac.client`` and ``robot_sac.schemas`` of the core (and the env libraries).

A scripted expert (:mod:`robot_sac.sim.experts`) stands in for a teleoperator: it can drive the
first episodes (demonstrations, logged with source ``"demo"``) and take over a policy episode
that is going nowhere for a stretch (an intervention, logged with source ``"human"``). Either
way the robot still asks the service every step, and a held robot applies the safe action the
service answers whatever the expert wants: a held step is logged as the service's
(``"policy"``, with the answering version), since the expert did not choose its action.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from robot_sac.client import RobotClient, ServiceError
from robot_sac.quiet import c_output_silenced
from robot_sac.sim.envs import make_env
from robot_sac.sim.experts import Expert, expert_for

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
    # The version that chose most of the episode's actions (held steps included: the service
    # chose those); None when none did (a demonstration that was never held).
    policy_version: int | None
    demo: bool = False  # the expert drove the episode from its start
    human_steps: int = 0  # steps whose action the expert chose in an intervention
    held_steps: int = 0  # steps the service held (the safe action applied)


@dataclass(frozen=True)
class InterventionRule:
    """When the expert, watching a policy episode, takes over and for how long.

    A watched episode (each with probability ``intervene``) is *struggling* once ``patience``
    steps have passed without the distance to the goal (the expert's measure, the one the dense
    reward is minus) coming ``min_progress`` metres below its best so far in the episode. The
    expert then drives for ``stretch`` steps (or to the episode's end) and hands back; at most
    once an episode.
    """

    patience: int = 10
    min_progress: float = 0.005
    stretch: int = 20


class _Watch:
    """One policy episode as the operator (the expert) watches it: see :class:`InterventionRule`."""

    def __init__(
        self,
        rule: InterventionRule,
        expert: Expert,
        obs: np.ndarray,
        watched: bool,
        episode_id: str,
    ) -> None:
        self.rule, self.expert, self.watched = rule, expert, watched
        self.episode_id = episode_id
        self.best = expert.goal_distance(obs)
        self.stalled = 0  # steps since the best distance last improved
        self.left = 0  # steps of the stretch still to drive
        self.done = False  # took over already: once an episode

    def expert_drives(self) -> bool:
        """Whether the expert chooses this step's action (starting a stretch if it is time)."""
        if self.watched and not self.done and self.stalled >= self.rule.patience:
            self.left, self.done = self.rule.stretch, True
            log.info(
                "the expert takes over %s after %d steps without progress",
                self.episode_id,
                self.stalled,
            )
        return self.left > 0

    def stepped(self, next_obs: np.ndarray) -> None:
        self.left = max(0, self.left - 1)
        d = self.expert.goal_distance(next_obs)
        if d < self.best - self.rule.min_progress:
            self.best, self.stalled = d, 0
        else:
            self.stalled += 1


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
    demos: int = 0,
    intervene: float = 0.0,
    rule: InterventionRule | None = None,
) -> list[EpisodeReport]:
    """Drive ``env_id`` for ``steps`` environment steps through the service at ``url``.

    The first ``demos`` episodes are the scripted expert's demonstrations; after them the policy
    acts, and the expert watches each policy episode with probability ``intervene`` and takes
    over when it struggles (``rule``). Demonstration and intervention steps count in ``steps``:
    they cost robot time too. Episode ids carry ``run_id`` (fresh by default), so a second run
    logs new transitions. ``should_stop()`` ends the run early, after the current step; either
    way every logged transition is flushed before returning. Returns the reports of the
    episodes it finished. ValueError if ``demos`` or ``intervene`` asks for an expert that
    ``env_id`` does not have.
    """
    if demos < 0 or not 0.0 <= intervene <= 1.0:
        raise ValueError(f"demos must be >= 0 and intervene in [0, 1], not {demos}, {intervene}")
    expert = expert_for(env_id) if demos or intervene else None
    rule = rule or InterventionRule()
    coin = np.random.default_rng([seed, 17])  # the intervention draws: seeded, like the env
    with c_output_silenced(1, 2):  # PyBullet's build time and connection arguments
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
        human, held = 0, 0
        watch = _new_watch(expert, rule, obs, coin, intervene, episode < demos, f"{run_id}-0")
        next_tick = time.monotonic()
        for _ in range(steps):
            if should_stop is not None and should_stop():
                break
            if pacer is not None:
                pacer.wait()
            if period is not None:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.monotonic()))
            demo = episode < demos
            # Ask the service even when the expert drives: its answer carries the hold.
            action, version, hold = _act(client, obs, deterministic=False)
            takes_over = watch is not None and watch.expert_drives()
            source: Literal["policy", "human", "demo"] = "policy"
            if hold:
                held += 1  # the safe action, whoever wanted to drive
            elif demo or takes_over:
                assert expert is not None
                action = expert(obs).tolist()
                source = "demo" if demo else "human"
            if source == "policy":
                versions.append(version)
            elif source == "human":
                human += 1
            next_obs, reward, terminated, truncated, info = env.step(np.asarray(action, np.float32))
            next_obs = np.asarray(next_obs, np.float32)
            if watch is not None:
                watch.stepped(next_obs)
            episode_id = f"{run_id}-{episode}"
            client.log(
                episode_id,
                t,
                obs,
                action,
                float(reward),
                next_obs,
                terminated,
                truncated,
                version if source == "policy" else None,  # no version chose the expert's
                source=source,
            )
            total += float(reward)
            t += 1
            if terminated or truncated:
                success = info.get("is_success")
                report = EpisodeReport(
                    robot_id,
                    episode_id,
                    t,
                    total,
                    None if success is None else bool(success),
                    int(np.bincount(versions).argmax()) if versions else None,
                    demo=demo,
                    human_steps=human,
                    held_steps=held,
                )
                reports.append(report)
                if on_episode is not None:
                    on_episode(report)
                obs, _ = env.reset()
                obs = np.asarray(obs, np.float32)
                episode, t, total, versions = episode + 1, 0, 0.0, []
                human, held = 0, 0
                watch = _new_watch(
                    expert, rule, obs, coin, intervene, episode < demos, f"{run_id}-{episode}"
                )
            else:
                obs = next_obs
        client.flush()
    finally:
        client.close(timeout_s=60.0)
        if reader is not None:
            reader.close()
        env.close()
    return reports


def _new_watch(
    expert: Expert | None,
    rule: InterventionRule,
    obs: np.ndarray,
    coin: np.random.Generator,
    intervene: float,
    demo: bool,
    episode_id: str,
) -> _Watch | None:
    """The operator's watch over a new episode: None for a demonstration or without an expert.
    The coin is drawn for every policy episode, so the draws do not depend on what happened."""
    if expert is None or demo:
        return None
    return _Watch(rule, expert, obs, bool(coin.random() < intervene), episode_id)


# A robot stopped by a signal (its parent died, or someone terminated it) still flushes what it
# logged, but for no longer than this: its service may be going away too. SIGALRM ends it then.
FLUSH_GRACE_S = 5


def robot_process(
    kwargs: dict[str, Any], reports: Any, stop: Any, parent: int | None = None
) -> None:
    """Entry point of one robot process (``multiprocessing``): episode reports go to a queue.

    Ctrl-C in the terminal, and the hang-up of a closed terminal, reach every process of the
    group; a robot ignores them and stops when its parent sets ``stop``, so it can flush its
    transitions first. SIGTERM stops it after the current step too, the flush bounded by
    :data:`FLUSH_GRACE_S`; with ``parent`` (its parent's pid) it gets SIGTERM when that parent
    dies (Linux), so a killed ``up`` or ``sim`` leaves no robot running.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    terminated = False

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal terminated
        terminated = True
        signal.alarm(FLUSH_GRACE_S)

    signal.signal(signal.SIGTERM, on_sigterm)
    if parent is not None:
        _die_with_parent(parent)
    # A robot reports through the queue; PyBullet's C library prints its build time to stdout
    # at exit, which would land in the middle of the parent's display.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    logging.basicConfig(level=logging.WARNING)
    run_robot(**kwargs, on_episode=reports.put, should_stop=lambda: terminated or stop.is_set())
    reports.put(None)  # this robot is done


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent ends (Linux's ``PR_SET_PDEATHSIG``); at once if it already has.

    What ``robot_sac.processes`` asks for the processes it spawns. A robot is started by
    multiprocessing, not by that harness, and may not import it: sim reaches only the client and
    the schemas of the core.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(1, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # PR_SET_PDEATHSIG is 1
