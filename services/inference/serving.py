"""What the service serves, and how a new version gets there; the operator's controls.

The served policy is one reference, swapped whole: a batch captures it once, so requests in
flight finish on the version they started with and every answer names the version that computed
it. A watcher polls the registry and the control state (a store that announces changes, such as
PostgreSQL, wakes it at once); a new version is loaded and validated off the event loop (the
file's own checks, then the task's sizes and bounds) before the swap. A version that fails a check
is refused, logged with the reason, counted, and never tried again; one whose bytes could not be
read (the store or the disk away for a moment) is tried again later.

The hold is memory first: pressing it holds every act answered from then on, whatever the store
is doing, and a background task then persists it, retrying until the store takes it (other
replicas and a restart learn of it from the store). Release, the unsafe direction, is written to
the store first and takes effect only once it is there. Control writes go through one thread of
their own, in order, never behind the transition log's writer threads.

Each replica reports the version it serves to the store (:meth:`Store.report_served`): at once
after a swap, and again every :data:`REPORT_SERVED_S` from the watcher. Version retention keeps
every version reported within :data:`~robot_sac.store.base.SERVED_WITHIN_S`, so the learner never
deletes a version some replica still answers with. A report that fails is logged and tried again
shortly; it never holds up or fails serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import torch

from robot_sac.policy import Policy, PolicyFileError, load_policy
from robot_sac.schemas import TaskSpec
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.store import (
    MAX_HELD_ROBOTS,
    ControlState,
    PolicyRecord,
    Store,
    StoreBusy,
    StoreError,
    UnknownVersion,
)

log = logging.getLogger("robot_sac.service")

# A version whose bytes could not be read is tried again after this long.
READ_RETRY_S = 1.0
# The background persistence of a hold retries this often while the store refuses it.
PERSIST_RETRY_S = 0.5
# How often a replica tells the store again which version it serves. Retention keeps what was
# reported within SERVED_WITHIN_S (600 s): twenty periods, so a few failed reports lose nothing.
REPORT_SERVED_S = 30.0
# After a report failed, the next try comes this soon.
REPORT_RETRY_S = 5.0


def default_replica_id() -> str:
    """This service process's name in the store's served-version reports: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StoreHealth:
    """How the store answered lately: ``ok``, ``busy`` or ``unavailable``, and why."""

    def __init__(self) -> None:
        self.state = "ok"
        self.reason: str | None = None
        self.since = time.time()

    def ok(self, wrote: bool = False) -> None:
        """A call succeeded; only a write (``wrote``) shows that a busy store is free again."""
        if self.state != "ok" and (wrote or self.state != "busy"):
            log.info("the store answers again (it was %s for %.1f s)", self.state, self._age())
            self.state, self.reason, self.since = "ok", None, time.time()

    def failed(self, exc: BaseException) -> None:
        state = "busy" if isinstance(exc, StoreBusy) else "unavailable"
        if state != self.state:
            log.warning("the store is %s: %s", state, exc)
            self.state, self.since = state, time.time()
        self.reason = str(exc)

    def _age(self) -> float:
        return time.time() - self.since

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "for_s": round(self._age(), 1)}


@dataclass(frozen=True)
class Served:
    """A validated, loaded version and its registry record."""

    policy: Policy
    record: PolicyRecord

    @property
    def version(self) -> int:
        return self.record.version


class ServingState:
    """The served version, the operator's control state and the watcher that keeps them current."""

    def __init__(
        self,
        spec: TaskSpec,
        store: Store,
        device: torch.device,
        metrics: ServiceMetrics,
        poll_s: float,
        replica_id: str | None = None,
    ) -> None:
        self.spec, self.store, self.device, self.metrics = spec, store, device, metrics
        self.poll_s = poll_s
        self.replica_id = replica_id or default_replica_id()
        # The version last reported to the store, when the last report was tried (monotonic),
        # and whether it failed.
        self._reported: int | None = None
        self._report_tried = -math.inf
        self._report_failing = False
        self._report_lock = asyncio.Lock()  # reports land in the order of the swaps
        self.served: Served | None = None
        self.control = ControlState()
        # What every act reads: True from the moment a hold arrives until a release is stored;
        # the same for each robot held one by one.
        self.hold = False
        self.held_robots: frozenset[str] = frozenset()
        self.refused: dict[int, str] = {}
        self._retry_at: dict[int, float] = {}
        # Control fields changed here and not yet in the store (the hold, while it persists).
        self._pending: dict[str, Any] = {}
        self._pending_robots: dict[str, bool] = {}
        self._overriding: set[str] = set()
        self._overriding_robots: set[str] = set()
        self._persisting: asyncio.Task[None] | None = None
        self.store_health = StoreHealth()
        # Bumped by every operator change, so a slower read by the watcher cannot undo it.
        self._control_generation = 0
        self.started_at = time.time()
        self._swap_lock = asyncio.Lock()
        # Loading runs beside inference, never in its thread, so a swap never stalls answers.
        # One torch thread: a team of OpenMP workers per core would spin after each load and
        # take the cores from inference (a new version reached other replicas 3x slower).
        self._loader = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="policy-loader",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        # Control writes, one at a time and in order, beside the log's writer threads.
        self._control_writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="control-writer"
        )

    @property
    def hold_persisted(self) -> bool:
        """Whether the store holds the hold state that acts answer with."""
        return "hold" not in self._pending and not self._pending_robots

    # --- loading and swapping ------------------------------------------------------------------
    def load(self, record: PolicyRecord) -> Policy:
        """Read, check and load a version (blocking: call it off the event loop)."""
        data = self.store.policy_bytes(record)
        policy = load_policy(
            data,
            sha256=record.sha256,
            device=self.device,
            safe_action=self.spec.safe_action,
            spec=self.spec,
        )
        return policy

    def _fetch(self, version: int) -> tuple[PolicyRecord, Policy] | None:
        """The record and the loaded policy of ``version``, None if it is not registered: one
        trip to the loader thread (an event-loop hop saved on the way to a new version)."""
        record = self.store.get_policy(version)
        if record is None:
            return None
        return record, self.load(record)

    async def swap_to(self, version: int) -> tuple[bool, str | None]:
        """Serve ``version`` if it loads and validates; else refuse it and keep the current one.

        Returns ``(swapped, reason)``. A version whose bytes could not be read (``OSError``, a
        store error) is not refused: it is tried again once :data:`READ_RETRY_S` has passed.
        After a swap the new version is reported to the store (see :meth:`report_served`).
        """
        swapped, reason = await self._swap_to(version)
        if swapped:
            await self.report_served()
        return swapped, reason

    async def _swap_to(self, version: int) -> tuple[bool, str | None]:
        async with self._swap_lock:
            if self.served is not None and self.served.version == version:
                return True, None
            if version in self.refused:
                return False, self.refused[version]
            if time.monotonic() < self._retry_at.get(version, 0.0):
                return False, f"version {version} could not be read; it is tried again shortly"
            loop = asyncio.get_running_loop()
            try:
                fetched = await loop.run_in_executor(self._loader, self._fetch, version)
            except (OSError, StoreError) as exc:
                self._retry_at[version] = time.monotonic() + READ_RETRY_S
                log.warning(
                    "policy version %d could not be read (tried again in %g s): %s",
                    version,
                    READ_RETRY_S,
                    exc,
                )
                return False, f"version {version} could not be read: {exc}"
            except (PolicyFileError, ValueError, RuntimeError) as exc:
                reason = str(exc)
                self.refused[version] = reason
                self.metrics.refused.inc()
                log.warning(
                    "policy version %d refused, still serving %s: %s",
                    version,
                    self.served.version if self.served else None,
                    reason,
                )
                return False, reason
            if fetched is None:
                return False, f"version {version} is not registered"
            record, policy = fetched
            self._retry_at.pop(version, None)
            previous = self.served.version if self.served else None
            self.served = Served(policy, record)
            self.metrics.swaps.inc()
            self.metrics.served_version.set(version)
            log.info("serving policy version %d (was %s)", version, previous)
            return True, None

    # --- the operator's controls ------------------------------------------------------------
    def holds(self, robot_id: str | None) -> bool:
        """Whether an act of ``robot_id`` (None: an act that names no robot) is held now."""
        return self.hold or (robot_id is not None and robot_id in self.held_robots)

    def _overlay(self, control: ControlState) -> ControlState:
        """``control`` with what is pending here (holds not yet stored) on top."""
        if self._pending:
            control = dataclasses.replace(control, **self._pending)
        if self._pending_robots:
            held = set(control.held_robots)
            for robot_id, on in self._pending_robots.items():
                (held.add if on else held.discard)(robot_id)
            control = dataclasses.replace(control, held_robots=frozenset(held))
        return control

    def _adopt(self, control: ControlState) -> None:
        """Take ``control`` from the store, with the fields still pending here on top."""
        self.control = self._overlay(control)
        self._set_hold(self.control.hold)
        self.held_robots = self.control.held_robots
        self.metrics.held_robots.set(len(self.held_robots))

    def _set_hold(self, hold: bool) -> None:
        self.hold = hold
        self.metrics.hold.set(1.0 if hold else 0.0)

    def press_hold(self, robot_id: str | None = None) -> None:
        """Hold every robot (or ``robot_id`` alone) now; persist it in the background (see the
        module docstring). Raises ``ValueError`` when :data:`MAX_HELD_ROBOTS` robots are held
        one by one already (hold them all instead)."""
        if robot_id is None:
            self._control_generation += 1
            self._set_hold(True)
            self._pending["hold"] = True
        else:
            if robot_id not in self.held_robots and len(self.held_robots) >= MAX_HELD_ROBOTS:
                raise ValueError(
                    f"{MAX_HELD_ROBOTS} robots are held one by one already: hold every robot "
                    "instead (POST /v1/admin/hold without a robot_id)"
                )
            self._control_generation += 1
            self.held_robots = self.held_robots | {robot_id}
            self._pending_robots[robot_id] = True
            self.metrics.held_robots.set(len(self.held_robots))
        self.control = self._overlay(self.control)
        self.metrics.hold_persisted.set(0.0)
        self._ensure_persisting()

    async def persisted_within(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for pending control fields to reach the store (the hold is
        already in force meanwhile); whether they did."""
        task = self._persisting
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout_s)  # never cancels the persisting
        return self.hold_persisted

    def _ensure_persisting(self) -> None:
        if self._persisting is None or self._persisting.done():
            self._persisting = asyncio.get_running_loop().create_task(self._persist())

    async def _persist(self) -> None:
        """Write the pending control fields and robot holds until the store has taken them."""
        while self._pending or self._pending_robots:
            # A field or robot an operator is writing right now (a release) is theirs to write.
            changes = {k: v for k, v in self._pending.items() if k not in self._overriding}
            robots = {
                r: v for r, v in self._pending_robots.items() if r not in self._overriding_robots
            }
            if not changes and not robots:
                await asyncio.sleep(PERSIST_RETRY_S)
                continue
            try:
                written = await self._write_control(changes, robots)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is busy or away: the hold stays in memory
                self.store_health.failed(exc)
                await asyncio.sleep(PERSIST_RETRY_S)
                continue
            for key, value in changes.items():
                if self._pending.get(key) == value:
                    del self._pending[key]
            for robot_id, value in robots.items():
                if self._pending_robots.get(robot_id) == value:
                    del self._pending_robots[robot_id]
            self.control = self._overlay(written)
        self.metrics.hold_persisted.set(1.0)
        log.info("hold persisted in the store")

    async def _write_control(
        self, changes: dict[str, Any], robots: dict[str, bool] | None = None
    ) -> ControlState:
        loop = asyncio.get_running_loop()
        control = await loop.run_in_executor(
            self._control_writer, lambda: self.store.update_control(robots=robots, **changes)
        )
        self.store_health.ok(wrote=True)
        return control

    async def set_control(
        self, robots: dict[str, bool] | None = None, **changes: Any
    ) -> ControlState:
        """Write ``changes`` (and ``robots``: holds of single robots) to the store, then adopt
        them (release, pause, pin, follow).

        Raises the store's error if it does not take them in time; nothing changes then.
        """
        robots = robots or {}
        # Until the store has the change, what is pending here (a hold not yet stored) stays in
        # force and pending; the persister leaves these fields to this write meanwhile.
        self._overriding.update(changes)
        self._overriding_robots.update(robots)
        try:
            control = await self._write_control(changes, robots)
        except BaseException as exc:
            # A refused change (an unknown version) is an answer, not the store failing.
            if not isinstance(exc, (asyncio.CancelledError, UnknownVersion)):
                self.store_health.failed(exc)
            raise
        finally:
            self._overriding.difference_update(changes)
            self._overriding_robots.difference_update(robots)
        for key in changes:
            self._pending.pop(key, None)
        for robot_id in robots:
            self._pending_robots.pop(robot_id, None)
        self._control_generation += 1
        self._adopt(control)
        if self.hold_persisted:
            self.metrics.hold_persisted.set(1.0)
        return self.control

    # --- following the registry and the operator ---------------------------------------------
    def _read_registry(self) -> tuple[ControlState, PolicyRecord | None]:
        return self.store.control(), self.store.latest_policy()

    async def sync(self) -> None:
        """Read the control state and registry once; swap if the served version should change."""
        generation = self._control_generation
        # One hop off the event loop for both reads: under load each hop costs milliseconds.
        control, latest = await anyio.to_thread.run_sync(self._read_registry)
        if generation != self._control_generation:
            return  # an operator changed it meanwhile; what we read may predate that
        self._adopt(control)
        control = self.control
        if control.mode == "pinned" and control.pinned_version is not None:
            if self.served is None or self.served.version != control.pinned_version:
                await self.swap_to(control.pinned_version)
            return
        if latest is None:
            return
        current = -1 if self.served is None else self.served.version
        # Follow: the newest version that validates; never go back to an older one, and never
        # past a newer one that could not be read yet (it is tried again on a later pass).
        for version in range(latest.version, current, -1):
            if version in self.refused:
                continue
            swapped, _ = await self.swap_to(version)
            if swapped or version in self._retry_at:
                return

    async def watch(self) -> None:
        while True:
            try:
                await self.sync()
                self.store_health.ok()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # the watcher outlives a store that is busy or away
                self.store_health.failed(exc)
            except Exception as exc:
                log.exception("policy watcher: sync failed; retrying")
                self.store_health.failed(exc)
            await self.report_served()
            await self._next_change()

    async def _next_change(self) -> None:
        """Wait for the next poll, or sooner for a store that announces changes."""
        if not self.store.announces_changes:
            await asyncio.sleep(self.poll_s)
            return
        # The wait blocks a worker thread; on shutdown it is abandoned, not waited for.
        await anyio.to_thread.run_sync(
            self.store.wait_for_change, self.poll_s, abandon_on_cancel=True
        )

    async def report_served(self) -> None:
        """Tell the store which version this replica serves, if it changed since the last report
        or :data:`REPORT_SERVED_S` has passed (after a failure: :data:`REPORT_RETRY_S`).

        The write runs off the event loop; a store that refuses it is logged, never raised.
        """
        async with self._report_lock:
            served = self.served
            if served is None:
                return
            version = served.version
            period = REPORT_RETRY_S if self._report_failing else REPORT_SERVED_S
            recent = time.monotonic() - self._report_tried < period
            if recent and (version == self._reported or self._report_failing):
                return
            self._report_tried = time.monotonic()
            try:
                await anyio.to_thread.run_sync(self.store.report_served, self.replica_id, version)
            except Exception as exc:  # a StoreError, or a bug: serving goes on either way
                if not isinstance(exc, StoreError):
                    log.exception("reporting the served version failed")
                elif not self._report_failing:
                    log.warning(
                        "could not report serving version %d to the store (tried again in "
                        "%g s): %s",
                        version,
                        REPORT_RETRY_S,
                        exc,
                    )
                self._report_failing = True
                return
            if self._report_failing:
                log.info("reported serving version %d to the store again", version)
            self._reported, self._report_failing = version, False

    def close(self) -> None:
        if self._persisting is not None:
            self._persisting.cancel()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._control_writer.shutdown(wait=False, cancel_futures=True)
