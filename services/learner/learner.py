"""The asynchronous learner: tail the transition log, run SAC, publish versions, obey operators.

It talks to the rest only through the store. Each pass of :meth:`Learner.step` does a little of
everything, so no part waits on another: read the control state (every 50 ms), pull new log rows
into the replay buffer (every 20 ms, or at once while there is a backlog), run a short burst of
updates within the update-to-data budget, publish, checkpoint, and write the status row (every
0.1 s). Nothing here blocks on the service or the robots.

After each publish it applies version retention (:meth:`Store.prune_policies`): the newest
``keep_versions``, every ``keep_every``-th number, the pinned version and the versions replicas
report serving are kept, the rest deleted, so a long run does not fill the disk with versions.

It never takes, publishes or saves a non-finite step:

- log rows with a value beyond the task's bounds (or the defaults of :mod:`robot_sac.replay`) are
  quarantined on their way into the replay buffer, on tailing and on rebuilding alike;
- the SAC update skips, on the device, a step whose gradients are not finite or absurdly large;
- the state is checked finite before each publish and checkpoint; if it is not, the learner rolls
  back to the last state that was published or checkpointed, and publishes and saves nothing;
- :data:`MAX_SKIPPED_IN_A_ROW` updates skipped in a row mean a state that is finite but broken
  (every batch makes absurd gradients): the learner rolls back too;
- when a rollback cannot cure it (there is no good state, or another rollback is needed before
  the next good publish or checkpoint) it is ``faulted``: it stops updating and publishing and
  goes on writing its status, with the reason in ``fault``.

Besides its counters, the status tells operators how well learning keeps up with the robots
(``/metrics`` exports these; :mod:`.telemetry` computes the ratio and writes TensorBoard):

- ``env_steps``: environment steps (log transitions) consumed into the replay buffer over the
  learner's life, quarantined rows left out; the same count as ``transitions_consumed``, named
  for the x-axis of learning curves.
- ``utd``: the configured update-to-data ratio; ``utd_effective``: the ratio achieved over about
  the last 30 s, Δupdates / Δenv_steps (None when no transition arrived in that window). Below
  ``utd`` the learner cannot keep up with the robots; above it, it is catching up on a backlog
  (e.g. just past ``learning_starts``).
- ``data_age_s``: how stale the learner's view of the log is: the seconds since the start of the
  latest read that found no more rows, so every transition the store accepted before that moment
  is in the replay buffer. Near the pull period (20 ms) while the learner keeps up; it grows while
  the learner cannot read the log (store away) or is behind on a backlog. Robots that send
  nothing do not age it: the learner has all there is (``transitions accepted/s`` shows that).
- ``data_age_updates``: updates between the versions that produced the newest data and now (how
  off-policy the newest data is).

With ``SACConfig.obs_normalization`` (:mod:`robot_sac.normalization`) the learner also keeps the
running mean and variance of the observations of every row it consumes (the rows ``consumed``
counts, quarantined ones left out; saved in the checkpoint), normalises the ``obs`` and
``next_obs`` of each sampled batch with the current statistics before the update (inside the CUDA
graph when there is one), and publishes each version with the statistics of that moment frozen
in its file (format 2). The replay buffer keeps raw observations, as the log does.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.normalization import LiveNormalization, ObsNormalization, RunningMeanStd
from robot_sac.policy import PolicyFileError, check_task, load_policy, policy_bytes
from robot_sac.replay import DEFAULT_OBS_BOUND, DEFAULT_REWARD_BOUND, ReplayBuffer, sane_rows
from robot_sac.sac import SAC
from robot_sac.schemas import TaskSpec
from robot_sac.services.learner.checkpoint import load_checkpoint, save_checkpoint
from robot_sac.services.learner.telemetry import BehindAlarm, UtdWindow, open_board
from robot_sac.settings import Settings
from robot_sac.store import LogRows, PolicyRecord, Store, StoreError
from robot_sac.store.records import SOURCE_CODES

log = logging.getLogger("robot_sac.learner")

CONTROL_PERIOD_S = 0.05
PULL_PERIOD_S = 0.02
STATUS_PERIOD_S = 0.1  # paced robots read the update count from here
PULL_ROWS = 10_000
BURST_SECONDS = 0.05  # longest run of updates between two looks at the control state
QUARANTINE_POSITIONS = 20  # log positions of the latest quarantined rows, kept for the status
# Updates skipped in a row by the gradient guard before the learner calls its state broken. One
# bad row makes a fraction of batches skip; a hundred in a row means every batch does.
MAX_SKIPPED_IN_A_ROW = 100


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class Counters:
    """What the learner has done, persisted in its checkpoint."""

    consumed: int = 0  # log rows put into the replay buffer, over the learner's whole life
    position: int = 0  # the last log position read
    last_published_updates: int = -1
    updates_at_version: dict[int, int] = field(default_factory=dict)
    # env steps consumed when each version this learner published was published (the x of its
    # episodes on the env-steps curves); the initial version 0 drove the first steps: 0
    env_steps_at_version: dict[int, int] = field(default_factory=dict)
    quarantined_rows: int = 0  # log rows refused by the screen (not in ``consumed``)
    quarantined_positions: list[int] = field(default_factory=list)  # the latest few
    rollbacks: int = 0  # times the state was restored to the last good one


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
        self._obs_bound = spec.obs_bound if spec.obs_bound is not None else DEFAULT_OBS_BOUND
        self._reward_bound = (
            spec.reward_bound if spec.reward_bound is not None else DEFAULT_REWARD_BOUND
        )
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
        self.utd_window = UtdWindow()
        self.behind = BehindAlarm()
        self._caught_up_at: float | None = None  # monotonic start of the last read that drained
        self._board = open_board(self.dir / "tb") if tensorboard else None
        self._logged_versions: set[int] = set()
        self.fault: str | None = None  # why the learner stopped for good; None while healthy
        self._good_state: dict[str, Any] | None = None  # as of the last good publish/checkpoint
        self._rollbacks_in_a_row = 0  # since the last good publish or checkpoint
        # Observation normalisation: float64 statistics on the host, and their float32 freeze
        # as device tensors the updates read (set in place: a captured graph keeps reading them).
        norm = self.cfg.obs_normalization
        self.obs_rms = RunningMeanStd(spec.obs_dim) if norm else None
        self._live_norm = (
            LiveNormalization(spec.obs_dim, device, self.cfg.obs_norm_clip) if norm else None
        )
        # log rows at or before this position are in obs_rms already (restored from a checkpoint)
        self._norm_counted_to = -1

    # --- start-up ------------------------------------------------------------------------------
    def start(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Resume from the checkpoint (or the served version's actor) and rebuild the replay.

        ``progress(done, total)`` is called while the replay buffer is rebuilt.
        """
        state = load_checkpoint(self.checkpoint_path)
        if state is not None:
            refit = False
            try:
                self.sac.load_state_dict(state["sac"])
            except (RuntimeError, ValueError, KeyError) as exc:
                # The task's networks changed since the checkpoint (critic options, sizes): keep
                # the counters and learn on from the served actor with fresh critics.
                log.warning(
                    "the checkpoint's networks do not fit the task's SAC settings (%s): starting "
                    "from the served actor and fresh critics",
                    str(exc).splitlines()[0],
                )
                self._fresh_sac(updates=int(state["sac"]["updates"]))
                refit = True
            self.counters = Counters(
                consumed=int(state["consumed"]),
                position=int(state["position"]),
                last_published_updates=int(state["last_published_updates"]),
                updates_at_version={int(k): int(v) for k, v in state["updates_at_version"].items()},
                env_steps_at_version={
                    int(k): int(v) for k, v in state.get("env_steps_at_version", {}).items()
                },
                # absent from checkpoints written before the learner screened and guarded
                quarantined_rows=int(state.get("quarantined_rows", 0)),
                quarantined_positions=[int(p) for p in state.get("quarantined_positions", [])],
                rollbacks=int(state.get("rollbacks", 0)),
            )
            torch.set_rng_state(state["rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            log.info("resumed from %s at %d updates", self.checkpoint_path, self.sac.updates)
            if refit:
                self._start_from_served_actor()
            elif not self.sac.is_finite():
                # e.g. saved by a learner that had no guard: keep the counters, not the weights
                log.error(
                    "the checkpoint holds non-finite values: starting from the served actor "
                    "and fresh critics"
                )
                self._fresh_sac(updates=self.sac.updates)
                self.counters.rollbacks += 1
                self._start_from_served_actor()
            self.sac.skipped_updates.fill_(float(state.get("skipped_updates", 0)))
            if self.obs_rms is not None and "obs_norm" in state:
                # absent from checkpoints written without normalisation: the rebuild below then
                # computes the statistics from the rows it puts into the replay buffer
                self.obs_rms.load_state_dict(state["obs_norm"])
                self._norm_counted_to = self.counters.position
                self._sync_norm()
        else:
            self._start_from_served_actor()
        self._keep_good_state()  # what a rollback restores until the first publish or checkpoint
        self._last_ckpt_updates = self.sac.updates
        self._rebuild_replay(progress)
        for record in self.store.list_policies():
            self.counters.updates_at_version.setdefault(record.version, record.updates)
            if record.updates == 0:  # untrained (the initial version): before any env step
                self.counters.env_steps_at_version.setdefault(record.version, 0)
            self.latest_version = record.version
        # the effective update-to-data ratio is measured from here
        self.utd_window.observe(time.monotonic(), self.sac.updates, self.counters.consumed)

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
            # load_policy refuses a version with non-finite weights
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
            read_at = time.monotonic()
            rows = self.store.read_after(position, PULL_ROWS)
            if len(rows) == 0:
                self._caught_up_at = read_at
                break
            self._add(rows, count_from=checkpoint_position)
            position = int(rows.position[-1])
            done += len(rows)
            if progress is not None:
                progress(done, total)
        self.counters.position = max(position, checkpoint_position)
        log.info("replay buffer rebuilt from the log: %d transitions", len(self.replay))

    def _fresh_sac(self, updates: int) -> None:
        self.sac = SAC(self.spec.obs_dim, self.spec.action_dim, self.cfg, device=self.device)
        self.sac.updates = updates
        self._graphed = None

    # --- the loop ------------------------------------------------------------------------------
    def _add(self, rows: LogRows, count_from: int) -> None:
        """Put log rows into the replay (actions to [-1, 1]); count those after ``count_from``.

        Rows from a human or a demonstration (any source but the policy's) are the replay's prior
        rows, which ``prior_share`` of each batch is drawn from.

        Rows that fail the screen (:func:`robot_sac.replay.sane_rows`) are quarantined instead:
        left out, counted, and their positions kept for the status. Rows at or before
        ``count_from`` were counted before the checkpoint; on a rebuild they are screened again
        but not counted twice.
        """
        sane = sane_rows(
            rows.obs, rows.action, rows.reward, rows.next_obs, self._obs_bound, self._reward_bound
        )
        if not sane.all():
            self._quarantine(rows.position[~sane], count_from)
            rows = LogRows(*(column[sane] for column in rows))
            if len(rows) == 0:
                return
        unit = np.clip((rows.action - self._center) / self._half_range, -1.0, 1.0)
        prior = rows.source != SOURCE_CODES["policy"]
        self.replay.add(rows.obs, unit, rows.reward, rows.next_obs, rows.terminated, prior=prior)
        self._observe_obs(rows)
        self.counters.consumed += int((rows.position > count_from).sum())
        versions = rows.policy_version[rows.policy_version >= 0]
        if len(versions):
            at = self.counters.updates_at_version
            ages = [self.sac.updates - at.get(int(v), self.sac.updates) for v in versions[-256:]]
            self.data_age_updates = float(np.mean(ages))

    def _observe_obs(self, rows: LogRows) -> None:
        """Merge the observations of screened rows into the normalisation statistics (those not
        in a restored checkpoint's statistics already), and refresh the device copy."""
        if self.obs_rms is None:
            return
        self.obs_rms.update(rows.obs[rows.position > self._norm_counted_to])
        self._sync_norm()

    def _sync_norm(self) -> None:
        frozen = self.frozen_norm()
        if frozen is not None and self._live_norm is not None:
            self._live_norm.set(frozen)

    def frozen_norm(self) -> ObsNormalization | None:
        """The normalisation as of now (what the updates use, and a publish ships); None when
        ``obs_normalization`` is off."""
        if self.obs_rms is None:
            return None
        return self.obs_rms.frozen(self.cfg.obs_norm_clip, self.cfg.obs_norm_eps)

    def _quarantine(self, positions: np.ndarray, count_from: int) -> None:
        new = [int(p) for p in positions if p > count_from]
        log.warning(
            "quarantined %d log rows with values beyond the bounds (obs %g, reward %g) or not "
            "finite, at positions %s",
            len(positions),
            self._obs_bound,
            self._reward_bound,
            [int(p) for p in positions[:QUARANTINE_POSITIONS]],
        )
        self.counters.quarantined_rows += len(new)
        kept = self.counters.quarantined_positions + new
        self.counters.quarantined_positions = kept[-QUARANTINE_POSITIONS:]

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

    def step(self, limit: int | None = None) -> int:
        """One pass of the loop, of at most ``limit`` updates; returns the number it ran."""
        now = time.monotonic()
        if now >= self._next["control"]:
            self.paused = self.store.control().learner_paused
            self._next["control"] = now + CONTROL_PERIOD_S
        if now >= self._next["pull"]:
            read_at = time.monotonic()
            rows = self.store.read_after(self.counters.position, PULL_ROWS)
            if len(rows):
                self._add(rows, count_from=self.counters.position)
                self.counters.position = int(rows.position[-1])
            # a full page means a backlog: read again on the next pass
            self._next["pull"] = now if len(rows) == PULL_ROWS else now + PULL_PERIOD_S
            if len(rows) < PULL_ROWS:  # the learner had the whole log as of (before) this read
                self._caught_up_at = read_at
        done = 0
        if not self.paused and self.fault is None:
            # A burst stops at the next publish, so versions come exactly every publish_every.
            since = self.sac.updates - max(self.counters.last_published_updates, 0)
            budget = min(self.update_budget(), max(1, self.settings.publish_every - since))
            if limit is not None:
                budget = min(budget, limit)
            deadline = now + BURST_SECONDS
            while done < budget and time.monotonic() < deadline:
                self.last_losses = self._update()
                done += 1
            if self._should_publish(now):
                self.publish()
            if self.sac.updates - self._last_ckpt_updates >= self.settings.checkpoint_every:
                self.checkpoint()
        if now >= self._next["status"]:
            self._check_skips()
            self.write_status()
            self._next["status"] = now + STATUS_PERIOD_S
        return done

    def _check_skips(self) -> None:
        """Recover when the gradient guard has skipped every recent update (one host sync)."""
        if self.fault is None and float(self.sac.skipped_in_a_row) >= MAX_SKIPPED_IN_A_ROW:
            self._recover(f"{MAX_SKIPPED_IN_A_ROW} updates in a row had non-finite gradients")

    def _update(self) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda" and self.settings.cuda_graphs:
            if self._graphed is None:
                from robot_sac.cuda_graphs import GraphedUpdate

                # the normalisation runs inside the graph, reading the live device statistics
                transform = None if self._live_norm is None else self._live_norm.batch
                self._graphed = GraphedUpdate(self.sac, self.replay, transform=transform)
            return self._graphed()
        batch = self.replay.sample(self.cfg.batch_size, prior_share=self.cfg.prior_share)
        if self._live_norm is not None:
            batch = self._live_norm.batch(batch)
        return self.sac.update(batch)

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
            left = None if max_updates is None else max_updates - self.sac.updates
            if self.step(left) == 0:
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

    def publish(self) -> PolicyRecord | None:
        """Register the current actor as the next version (the store numbers it).

        Only a finite training state is published (the actor, and the rest it will learn
        from); otherwise the learner rolls back and nothing is registered (None).
        """
        if self.fault is not None:
            return None
        if not self.sac.is_finite():
            self._recover("the training state became non-finite before a publish")
            return None
        data = policy_bytes(
            self.sac.actor,
            self.spec.action_low,
            self.spec.action_high,
            0,
            self.sac.updates,
            obs_norm=self.frozen_norm(),  # the statistics the latest updates normalised with
        )
        record = self.store.register_policy(data)
        assert record is not None
        self.counters.last_published_updates = self.sac.updates
        self.counters.updates_at_version[record.version] = self.sac.updates
        self.counters.env_steps_at_version[record.version] = self.counters.consumed
        self.latest_version = record.version
        self._last_publish_time = time.monotonic()
        self._keep_good_state()
        self._log_episodes()
        self.prune()
        return record

    def prune(self) -> list[int]:
        """Delete the versions retention does not keep (``keep_versions``, ``keep_every``, the
        pinned one, those replicas serve); return them. A store that fails here is logged and
        learning goes on: the versions are pruned after a later publish instead."""
        try:
            deleted = self.store.prune_policies(
                self.settings.keep_versions, self.settings.keep_every
            )
        except (StoreError, OSError) as exc:
            log.warning(
                "retention: could not delete old policy versions (tried again after "
                "the next publish): %s",
                exc,
            )
            return []
        if deleted:
            log.info(
                "retention: deleted %d policy versions (%d to %d)",
                len(deleted),
                min(deleted),
                max(deleted),
            )
        return deleted

    def checkpoint(self) -> bool:
        """Save the training state and counters, if the state is finite; whether it saved.

        A non-finite state is not saved: the learner rolls back instead (the file on disk stays
        the last good one).
        """
        if self.fault is not None:
            return False
        if not self.sac.is_finite():
            self._recover("the training state became non-finite before a checkpoint")
            return False
        state: dict[str, Any] = {
            "sac": self.sac.state_dict(),
            "consumed": self.counters.consumed,
            "position": self.counters.position,
            "last_published_updates": self.counters.last_published_updates,
            "updates_at_version": {str(k): v for k, v in self.counters.updates_at_version.items()},
            "env_steps_at_version": {
                str(k): v for k, v in self.counters.env_steps_at_version.items()
            },
            "quarantined_rows": self.counters.quarantined_rows,
            "quarantined_positions": list(self.counters.quarantined_positions),
            "skipped_updates": int(self.sac.skipped_updates),
            "rollbacks": self.counters.rollbacks,
            "rng": torch.get_rng_state(),
        }
        if self.obs_rms is not None:
            state["obs_norm"] = self.obs_rms.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.checkpoint_path, state)
        self._last_ckpt_updates = self.sac.updates
        self._keep_good_state()
        return True

    # --- recovery ------------------------------------------------------------------------------
    def _keep_good_state(self) -> None:
        """Remember the current (finite, just published or saved) state to roll back to.

        Not while the gradient guard is skipping: a state whose latest update was skipped may be
        finite yet broken, and rolling back to it would cure nothing.
        """
        if float(self.sac.skipped_in_a_row) > 0:
            return
        self._good_state = copy.deepcopy(self.sac.state_dict())
        self._rollbacks_in_a_row = 0

    def _recover(self, reason: str) -> None:
        """Roll back to the last good state, or fault if a rollback cannot cure ``reason``."""
        if self._good_state is None:
            self._set_fault(f"{reason}, and there is no good state to roll back to")
            return
        if self._rollbacks_in_a_row >= 1:
            self._set_fault(f"{reason} again after a rollback")
            return
        self.sac.load_state_dict(self._good_state)
        self.sac.skipped_in_a_row.zero_()
        # the optimisers' state tensors were replaced: a captured graph would use the old ones
        self._graphed = None
        self.counters.rollbacks += 1
        self._rollbacks_in_a_row += 1
        self.last_losses = {}
        log.error("%s: rolled back to the state at %d updates", reason, self.sac.updates)

    def _set_fault(self, reason: str) -> None:
        self.fault = reason
        log.error("learner faulted: %s; it stops updating and publishing", reason)

    def status(self) -> LearnerStatus:
        """The status row written at every heartbeat (the fields are described in the module's
        docstring); it also advances the window the effective update-to-data ratio looks at."""
        now = time.monotonic()
        mark_time, mark_updates = self._rate_mark
        if now - mark_time >= 1.0 or self.updates_per_s == 0.0:
            if now > mark_time:
                # a rollback sets the update count back: no negative rate
                done = max(0, self.sac.updates - mark_updates)
                self.updates_per_s = done / (now - mark_time)
            self._rate_mark = (now, self.sac.updates)
        self.utd_window.observe(now, self.sac.updates, self.counters.consumed)
        utd_effective = self.utd_window.ratio(self.sac.updates, self.counters.consumed)
        data_age_s = None if self._caught_up_at is None else now - self._caught_up_at
        # One device sync, here only. A skipped update's losses can be infinite: JSON (and
        # PostgreSQL's) has no infinity, so they are reported as null.
        stats = {k: _finite_or_none(float(v)) for k, v in self.last_losses.items()}
        waiting = len(self.replay) < min(self.cfg.learning_starts, self.cfg.buffer_size)
        if self.fault is not None:
            state = "faulted"
        else:
            state = "paused" if self.paused else ("waiting" if waiting else "running")
        warning = self.behind.check(now, state == "running", self.cfg.utd, utd_effective)
        if warning is not None:
            log.warning(warning)
        return LearnerStatus(
            state=state,
            heartbeat=time.time(),
            updates=self.sac.updates,
            updates_per_s=round(self.updates_per_s, 2),
            replay_size=len(self.replay),
            transitions_consumed=self.counters.consumed,
            env_steps=self.counters.consumed,  # one count, named for the learning curves
            log_position=self.counters.position,
            losses={k: stats[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha") if k in stats},
            alpha=stats.get("alpha"),
            entropy=stats.get("entropy"),
            q_mean=stats.get("q_mean"),
            latest_version=self.latest_version,
            data_age_updates=self.data_age_updates,
            data_age_s=None if data_age_s is None else round(data_age_s, 3),
            utd=self.cfg.utd,
            utd_effective=None if utd_effective is None else round(utd_effective, 4),
            learning_starts=self.cfg.learning_starts,
            device=str(self.device),
            quarantined_rows=self.counters.quarantined_rows,
            quarantined_positions=list(self.counters.quarantined_positions),
            skipped_updates=int(self.sac.skipped_updates),  # one device sync, here only
            rollbacks=self.counters.rollbacks,
            fault=self.fault,
        )

    def write_status(self) -> None:
        status = self.status()
        self.store.write_learner_status(status)
        if self._board is not None and self.last_losses:
            scalars: dict[str, float | None] = {f"loss/{k}": v for k, v in status.losses.items()}
            scalars |= {
                "sac/alpha": status.alpha,
                "sac/entropy": status.entropy,
                "sac/q_mean": status.q_mean,
                "sac/updates_per_s": status.updates_per_s,
                "data/age_updates": status.data_age_updates,
                "data/age_s": status.data_age_s,
                "data/utd_effective": status.utd_effective,
                "data/replay_size": status.replay_size,
            }
            self._board.scalars(scalars, self.sac.updates, self.counters.consumed)

    def _log_episodes(self) -> None:
        """Episode returns per version (of versions before the newest, whose episodes are in),
        at the updates and the env steps of the version's publish."""
        if self._board is None:
            return
        for e in self.store.episodes_by_version(recent=0):
            if e.version in self._logged_versions or e.version == self.latest_version:
                continue
            if e.mean_return is not None:
                self._board.scalars(
                    {"episode/mean_return": e.mean_return, "episode/count": e.episodes},
                    self.counters.updates_at_version.get(e.version, 0),
                    # unknown for a version another learner published, or an operator uploaded
                    self.counters.env_steps_at_version.get(e.version),
                )
                self._logged_versions.add(e.version)

    def close(self, publish: bool = True) -> None:
        """Publish what was learnt since the last version, checkpoint, flush the event files.

        A faulted learner publishes and saves nothing: its status says why.
        """
        if publish and self.sac.updates > max(self.counters.last_published_updates, 0):
            self.publish()
        self.checkpoint()
        self.write_status()
        if self._board is not None:
            self._board.close()
