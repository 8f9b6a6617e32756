"""The asynchronous learner: tail the transition log, run SAC, publish versions, obey operators.

It talks to the rest only through the store. Each pass of :meth:`Learner.step` does a little of
everything, so no part waits on another: read the control state (every 50 ms), pull new log rows
into the replay buffer (every 20 ms, or at once while there is a backlog), run a short burst of
updates within the update-to-data budget, publish, checkpoint, and write the status row (every
0.1 s). Nothing here blocks on the service or the robots.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac.policy import PolicyFileError, check_task, load_policy, policy_bytes
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC
from robot_sac.schemas import TaskSpec
from robot_sac.services.learner.checkpoint import load_checkpoint, save_checkpoint
from robot_sac.settings import Settings
from robot_sac.store import LogRows, PolicyRecord, Store

log = logging.getLogger("robot_sac.learner")

CONTROL_PERIOD_S = 0.05
PULL_PERIOD_S = 0.02
STATUS_PERIOD_S = 0.1  # paced robots read the update count from here
PULL_ROWS = 10_000
BURST_SECONDS = 0.05  # longest run of updates between two looks at the control state


@dataclass
class Counters:
    """What the learner has done, persisted in its checkpoint."""

    consumed: int = 0  # log rows put into the replay buffer, over the learner's whole life
    position: int = 0  # the last log position read
    last_published_updates: int = -1
    updates_at_version: dict[int, int] = field(default_factory=dict)


class Learner:
    """SAC on the transition log. Create, :meth:`start`, then :meth:`run` (or :meth:`step`)."""

    def __init__(
        self,
        settings: Settings,
        spec: TaskSpec,
        store: Store,
        device: torch.device,
        tensorboard: bool = True,
    ) -> None:
        self.settings, self.spec, self.store, self.device = settings, spec, store, device
        self.cfg = spec.sac
        self.sac = SAC(spec.obs_dim, spec.action_dim, self.cfg, device=device)
        self.replay = ReplayBuffer(self.cfg.buffer_size, spec.obs_dim, spec.action_dim, device)
        self.counters = Counters()
        low = np.asarray(spec.action_low, np.float32)
        high = np.asarray(spec.action_high, np.float32)
        self._center, self._half_range = (high + low) / 2, (high - low) / 2
        self.dir = Path(settings.data_dir) / "learner"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.paused = False
        self.last_losses: dict[str, torch.Tensor] = {}
        self.updates_per_s = 0.0
        self.data_age_updates: float | None = None
        self.latest_version: int | None = None
        self._graphed: Any = None
        self._last_ckpt_updates = 0
        self._last_publish_time = time.monotonic()
        self._next = {"control": 0.0, "pull": 0.0, "status": 0.0}
        self._rate_mark = (time.monotonic(), 0)
        self._writer = self._tensorboard() if tensorboard else None
        self._logged_versions: set[int] = set()

    # --- start-up ------------------------------------------------------------------------------
    def start(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Resume from the checkpoint (or the served version's actor) and rebuild the replay.

        ``progress(done, total)`` is called while the replay buffer is rebuilt.
        """
        state = load_checkpoint(self.checkpoint_path)
        if state is not None:
            self.sac.load_state_dict(state["sac"])
            self.counters = Counters(
                consumed=int(state["consumed"]),
                position=int(state["position"]),
                last_published_updates=int(state["last_published_updates"]),
                updates_at_version={int(k): int(v) for k, v in state["updates_at_version"].items()},
            )
            torch.set_rng_state(state["rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            log.info("resumed from %s at %d updates", self.checkpoint_path, self.sac.updates)
        else:
            self._start_from_served_actor()
        self._last_ckpt_updates = self.sac.updates
        self._rebuild_replay(progress)
        for record in self.store.list_policies():
            self.counters.updates_at_version.setdefault(record.version, record.updates)
            self.latest_version = record.version

    def _start_from_served_actor(self) -> None:
        control = self.store.control()
        record = (
            self.store.get_policy(control.pinned_version)
            if control.mode == "pinned" and control.pinned_version is not None
            else self.store.latest_policy()
        )
        if record is None:
            return
        try:
            policy = load_policy(self.store.policy_bytes(record), sha256=record.sha256)
            check_task(policy.info, self.spec)
            self.sac.actor.load_state_dict(policy.actor.state_dict())
        except (PolicyFileError, RuntimeError, ValueError) as exc:
            # e.g. a version with other network sizes, uploaded by an operator
            log.warning(
                "starting from a fresh actor: version %d does not fit: %s", record.version, exc
            )
            return
        log.info("starting from the actor of version %d and fresh critics", record.version)

    def _rebuild_replay(self, progress: Callable[[int, int], None] | None) -> None:
        start = self.store.position_before_latest(self.cfg.buffer_size)
        total = min(self.store.transition_count(), self.cfg.buffer_size)
        position, done = start, 0
        checkpoint_position = self.counters.position
        while True:
            rows = self.store.read_after(position, PULL_ROWS)
            if len(rows) == 0:
                break
            self._add(rows, count_from=checkpoint_position)
            position = int(rows.position[-1])
            done += len(rows)
            if progress is not None:
                progress(done, total)
        self.counters.position = max(position, checkpoint_position)
        log.info("replay buffer rebuilt from the log: %d transitions", len(self.replay))

    # --- the loop ------------------------------------------------------------------------------
    def _add(self, rows: LogRows, count_from: int) -> None:
        """Put log rows into the replay (actions to [-1, 1]); count those after ``count_from``."""
        unit = np.clip((rows.action - self._center) / self._half_range, -1.0, 1.0)
        self.replay.add(rows.obs, unit, rows.reward, rows.next_obs, rows.terminated)
        self.counters.consumed += int((rows.position > count_from).sum())
        versions = rows.policy_version[rows.policy_version >= 0]
        if len(versions):
            at = self.counters.updates_at_version
            ages = [self.sac.updates - at.get(int(v), self.sac.updates) for v in versions[-256:]]
            self.data_age_updates = float(np.mean(ages))

    def update_budget(self) -> int:
        """Updates allowed now: ``utd`` per logged transition past ``learning_starts``."""
        if len(self.replay) == 0 or len(self.replay) < min(
            self.cfg.learning_starts, self.cfg.buffer_size
        ):
            return 0
        if self.cfg.utd == 0:
            return 1 << 30  # as fast as the machine allows
        allowed = math.floor(
            self.cfg.utd * max(0, self.counters.consumed - self.cfg.learning_starts)
        )
        return max(0, allowed - self.sac.updates)

    def step(self) -> int:
        """One pass of the loop; returns the number of updates it ran."""
        now = time.monotonic()
        if now >= self._next["control"]:
            self.paused = self.store.control().learner_paused
            self._next["control"] = now + CONTROL_PERIOD_S
        if now >= self._next["pull"]:
            rows = self.store.read_after(self.counters.position, PULL_ROWS)
            if len(rows):
                self._add(rows, count_from=self.counters.position)
                self.counters.position = int(rows.position[-1])
            # a full page means a backlog: read again on the next pass
            self._next["pull"] = now if len(rows) == PULL_ROWS else now + PULL_PERIOD_S
        done = 0
        if not self.paused:
            # A burst stops at the next publish, so versions come exactly every publish_every.
            since = self.sac.updates - max(self.counters.last_published_updates, 0)
            budget = min(self.update_budget(), max(1, self.settings.publish_every - since))
            deadline = now + BURST_SECONDS
            while done < budget and time.monotonic() < deadline:
                self.last_losses = self._update()
                done += 1
            if self._should_publish(now):
                self.publish()
            if self.sac.updates - self._last_ckpt_updates >= self.settings.checkpoint_every:
                self.checkpoint()
        if now >= self._next["status"]:
            self.write_status()
            self._next["status"] = now + STATUS_PERIOD_S
        return done

    def _update(self) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda" and self.settings.cuda_graphs:
            if self._graphed is None:
                from robot_sac.cuda_graphs import GraphedUpdate

                self._graphed = GraphedUpdate(self.sac, self.replay)
            return self._graphed()
        return self.sac.update(self.replay.sample(self.cfg.batch_size))

    def run(
        self,
        should_stop: Callable[[], bool],
        max_updates: int | None = None,
        on_pass: Callable[[], None] | None = None,
    ) -> None:
        """Step until ``should_stop()`` or ``max_updates``; idle briefly when there is no work.

        ``on_pass`` is called after every pass (a live display, say).
        """
        while not should_stop():
            if max_updates is not None and self.sac.updates >= max_updates:
                break
            if self.step() == 0:
                # nothing to do: sleep until the next look at the log or the control state
                wake = min(self._next["pull"], self._next["control"])
                time.sleep(min(0.02, max(0.001, wake - time.monotonic())))
            if on_pass is not None:
                on_pass()

    # --- publishing, checkpoints, status ------------------------------------------------------
    def _should_publish(self, now: float) -> bool:
        fresh = self.sac.updates - max(self.counters.last_published_updates, 0)
        if self.sac.updates == 0 or self.sac.updates == self.counters.last_published_updates:
            return False
        return (
            fresh >= self.settings.publish_every
            or now - self._last_publish_time >= self.settings.publish_seconds
        )

    def publish(self) -> PolicyRecord:
        """Register the current actor as the next version (the store numbers it)."""
        data = policy_bytes(
            self.sac.actor, self.spec.action_low, self.spec.action_high, 0, self.sac.updates
        )
        record = self.store.register_policy(data)
        assert record is not None
        self.counters.last_published_updates = self.sac.updates
        self.counters.updates_at_version[record.version] = self.sac.updates
        self.latest_version = record.version
        self._last_publish_time = time.monotonic()
        self._log_episodes()
        return record

    def checkpoint(self) -> None:
        state: dict[str, Any] = {
            "sac": self.sac.state_dict(),
            "consumed": self.counters.consumed,
            "position": self.counters.position,
            "last_published_updates": self.counters.last_published_updates,
            "updates_at_version": {str(k): v for k, v in self.counters.updates_at_version.items()},
            "rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.checkpoint_path, state)
        self._last_ckpt_updates = self.sac.updates

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        mark_time, mark_updates = self._rate_mark
        if now - mark_time >= 1.0 or self.updates_per_s == 0.0:
            if now > mark_time:
                self.updates_per_s = (self.sac.updates - mark_updates) / (now - mark_time)
            self._rate_mark = (now, self.sac.updates)
        stats = {k: float(v) for k, v in self.last_losses.items()}  # one device sync, here only
        waiting = len(self.replay) < min(self.cfg.learning_starts, self.cfg.buffer_size)
        return {
            "state": "paused" if self.paused else ("waiting" if waiting else "running"),
            "updates": self.sac.updates,
            "updates_per_s": round(self.updates_per_s, 2),
            "replay_size": len(self.replay),
            "transitions_consumed": self.counters.consumed,
            "log_position": self.counters.position,
            "losses": {
                k: stats[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha") if k in stats
            },
            "alpha": stats.get("alpha"),
            "entropy": stats.get("entropy"),
            "q_mean": stats.get("q_mean"),
            "latest_version": self.latest_version,
            "data_age_updates": self.data_age_updates,
            "utd": self.cfg.utd,
            "learning_starts": self.cfg.learning_starts,
            "device": str(self.device),
        }

    def write_status(self) -> None:
        status = self.status()
        self.store.write_learner_status(status)
        if self._writer is not None and self.last_losses:
            step = self.sac.updates
            for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
                self._writer.add_scalar(f"loss/{key}", status["losses"][key], step)
            for key in ("alpha", "entropy", "q_mean", "updates_per_s"):
                self._writer.add_scalar(f"sac/{key}", status[key], step)
            if self.data_age_updates is not None:
                self._writer.add_scalar("data/age_updates", self.data_age_updates, step)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            log.warning("tensorboard is not installed: no event files under %s", self.dir / "tb")
            return None
        return SummaryWriter(log_dir=str(self.dir / "tb"), flush_secs=10)

    def _log_episodes(self) -> None:
        """Episode returns per version (of versions before the newest, whose episodes are in)."""
        if self._writer is None:
            return
        for e in self.store.episodes_by_version(recent=0):
            if e.version in self._logged_versions or e.version == self.latest_version:
                continue
            if e.mean_return is not None:
                step = self.counters.updates_at_version.get(e.version, 0)
                self._writer.add_scalar("episode/mean_return", e.mean_return, step)
                self._writer.add_scalar("episode/count", e.episodes, step)
                self._logged_versions.add(e.version)

    def close(self, publish: bool = True) -> None:
        """Publish what was learnt since the last version, checkpoint, flush the event files."""
        if publish and self.sac.updates > max(self.counters.last_published_updates, 0):
            self.publish()
        self.checkpoint()
        self.write_status()
        if self._writer is not None:
            self._writer.close()
