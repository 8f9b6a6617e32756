"""SAC in one process, on one Gymnasium-style environment.

Not a second product: tests and benchmarks use it to check the algorithm apart from the service,
the log and the learner. The environment is passed in (anything with Gymnasium's ``reset`` and
``step``), so this module imports no simulator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, SupportsFloat

import numpy as np
import torch

from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC
from robot_sac.schemas import TaskSpec


class Env(Protocol):
    """The part of Gymnasium's ``Env`` API used here."""

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]: ...


@dataclass
class TrainResult:
    """What a run did: its learner, every episode's return and the periodic evaluations."""

    sac: SAC
    spec: TaskSpec
    steps: int = 0
    seconds: float = 0.0
    episode_returns: list[tuple[int, float]] = field(default_factory=list)  # (step, return)
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, mean return)


class ActionScaler:
    """Maps the policy's ``[-1, 1]`` onto the task's bounds and back."""

    def __init__(self, spec: TaskSpec) -> None:
        self.low = np.asarray(spec.action_low, dtype=np.float32)
        self.high = np.asarray(spec.action_high, dtype=np.float32)

    def to_robot(self, unit: np.ndarray) -> np.ndarray:
        return np.clip(self.low + (unit + 1.0) * 0.5 * (self.high - self.low), self.low, self.high)

    def to_unit(self, action: np.ndarray) -> np.ndarray:
        return np.clip(2.0 * (action - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0)


# The first seed of a final, held-out evaluation (`robot-sac eval`, the benchmarks): episode i
# is reset with EVAL_SEED + i, far from every seed a training run uses (robots are seeded from
# small numbers, train_local's periodic evaluations from 10_000 + 1000 * seed).
EVAL_SEED = 1_000_000


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: its return, length, and success when the env reports one."""

    return_: float
    length: int
    success: bool | None


def rollout(
    act: Callable[[np.ndarray], np.ndarray], env: Env, episodes: int, seed: int
) -> list[Episode]:
    """``episodes`` episodes, episode ``i`` reset with seed ``seed + i``.

    ``act`` maps one observation to one action in robot units. Success is the env's own
    ``info["is_success"]`` at the end of the episode (panda-gym reports it), else None.
    """
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, length, done = 0.0, 0, False
        info: dict[str, Any] = {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(np.asarray(obs, np.float32)))
            total += float(reward)
            length += 1
            done = terminated or truncated
        success = info.get("is_success")
        out.append(Episode(total, length, None if success is None else bool(success)))
    return out


def evaluate(
    act: Callable[[np.ndarray], np.ndarray], env: Env, episodes: int, seed: int
) -> list[float]:
    """Returns of ``episodes`` episodes (see :func:`rollout`)."""
    return [e.return_ for e in rollout(act, env, episodes, seed)]


def train_local(
    env: Env,
    spec: TaskSpec,
    total_steps: int,
    seed: int = 0,
    eval_env: Env | None = None,
    eval_every: int = 0,
    eval_episodes: int = 10,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Run SAC for ``total_steps`` environment steps, ``spec.sac.utd`` updates per step.

    The first ``spec.sac.learning_starts`` steps act uniformly at random. Every ``eval_every``
    steps (if both it and ``eval_env`` are given) the deterministic policy is scored on
    ``eval_episodes`` episodes with seeds the training never uses.
    """
    cfg = spec.sac
    if cfg.utd <= 0:
        raise ValueError("train_local needs utd > 0 (updates per environment step)")
    if cfg.obs_normalization:
        # Refused rather than ignored: its actor would be trained and scored on raw observations
        # while the setting says otherwise.
        raise ValueError(
            "train_local does not implement obs_normalization: train through the learner "
            "(robot-sac up / learn), or turn the setting off"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sac = SAC(spec.obs_dim, spec.action_dim, cfg, device=device)
    replay = ReplayBuffer(min(cfg.buffer_size, total_steps), spec.obs_dim, spec.action_dim, device)
    scale = ActionScaler(spec)
    result = TrainResult(sac=sac, spec=spec)

    def policy_act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32, device=sac.device).unsqueeze(0)
        return sac.act(x, deterministic)[0].cpu().numpy()

    bar = _progress(progress, total_steps)
    start, owed, episode_return = time.perf_counter(), 0.0, 0.0
    obs, _ = env.reset(seed=seed)
    obs = np.asarray(obs, np.float32)
    for step in range(1, total_steps + 1):
        if step <= cfg.learning_starts:
            unit = rng.uniform(-1.0, 1.0, spec.action_dim).astype(np.float32)
        else:
            unit = policy_act(obs, deterministic=False)
        next_obs, reward, terminated, truncated, _ = env.step(scale.to_robot(unit))
        next_obs = np.asarray(next_obs, np.float32)
        replay.add(obs, unit, float(reward), next_obs, float(terminated))
        episode_return += float(reward)
        if terminated or truncated:
            result.episode_returns.append((step, episode_return))
            episode_return = 0.0
            next_obs, _ = env.reset()
            next_obs = np.asarray(next_obs, np.float32)
        obs = next_obs

        if step >= cfg.learning_starts:  # samples with replacement, so a small buffer is fine
            owed += cfg.utd
            while owed >= 1.0:
                sac.update(replay.sample(cfg.batch_size))
                owed -= 1.0
        if eval_env is not None and eval_every and step % eval_every == 0:
            scores = evaluate(
                lambda o: scale.to_robot(policy_act(o, True)),
                eval_env,
                eval_episodes,
                10_000 + seed * 1000,
            )
            result.evaluations.append((step, float(np.mean(scores))))
        if bar is not None:
            last = result.episode_returns[-1][1] if result.episode_returns else float("nan")
            bar.update(step, last)
    result.steps, result.seconds = total_steps, time.perf_counter() - start
    if bar is not None:
        bar.close()
    return result


class _Bar:
    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps · last return {task.fields[ret]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, ret="-")
        self.progress.start()

    def update(self, step: int, last_return: float) -> None:
        if step % 50 == 0:
            ret = "-" if np.isnan(last_return) else f"{last_return:.1f}"
            self.progress.update(self.task, completed=step, ret=ret)

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int) -> _Bar | None:
    return _Bar(total) if enabled else None
