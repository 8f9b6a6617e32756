"""What the service serves, and how a new version gets there.

The served policy is one reference, swapped whole: a batch captures it once, so requests in
flight finish on the version they started with and every answer names the version that computed
it. A watcher polls the registry and the control state; a new version is loaded and validated off
the event loop (the file's own checks, then the task's sizes and bounds) before the swap. A
version that fails is refused, logged with the reason, counted, and never tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anyio.to_thread
import torch

from robot_sac.policy import Policy, PolicyFileError, check_task, load_policy
from robot_sac.schemas import TaskSpec
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.store import ControlState, PolicyRecord, Store

log = logging.getLogger("robot_sac.service")


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
    ) -> None:
        self.spec, self.store, self.device, self.metrics = spec, store, device, metrics
        self.poll_s = poll_s
        self.served: Served | None = None
        self.control = ControlState()
        self.refused: dict[int, str] = {}
        # Bumped by every operator change, so a slower read by the watcher cannot undo it.
        self._control_generation = 0
        self.started_at = time.time()
        self._swap_lock = asyncio.Lock()
        # Loading runs beside inference, never in its thread, so a swap never stalls answers.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-loader")

    @property
    def hold(self) -> bool:
        return self.control.hold

    # --- loading and swapping ------------------------------------------------------------------
    def load(self, record: PolicyRecord) -> Policy:
        """Read, check and load a version (blocking: call it off the event loop)."""
        data = self.store.policy_bytes(record)
        policy = load_policy(data, sha256=record.sha256, device=self.device)
        check_task(policy.info, self.spec)
        policy.set_safe_action(self.spec.safe_action)
        return policy

    async def swap_to(self, version: int) -> tuple[bool, str | None]:
        """Serve ``version`` if it loads and validates; else refuse it and keep the current one.

        Returns ``(swapped, reason_refused)``.
        """
        async with self._swap_lock:
            if self.served is not None and self.served.version == version:
                return True, None
            if version in self.refused:
                return False, self.refused[version]
            record = await anyio.to_thread.run_sync(self.store.get_policy, version)
            if record is None:
                return False, f"version {version} is not registered"
            loop = asyncio.get_running_loop()
            try:
                policy = await loop.run_in_executor(self._loader, self.load, record)
            except (PolicyFileError, OSError, ValueError, RuntimeError) as exc:
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
            previous = self.served.version if self.served else None
            self.served = Served(policy, record)
            self.metrics.swaps.inc()
            self.metrics.served_version.set(version)
            log.info("serving policy version %d (was %s)", version, previous)
            return True, None

    # --- following the registry and the operator ---------------------------------------------
    def set_control(self, control: ControlState) -> None:
        """Adopt a control state an operator has just written (takes effect at once)."""
        self._control_generation += 1
        self.control = control
        self.metrics.hold.set(1.0 if control.hold else 0.0)

    async def sync(self) -> None:
        """Read the control state and registry once; swap if the served version should change."""
        generation = self._control_generation
        control = await anyio.to_thread.run_sync(self.store.control)
        if generation != self._control_generation:
            return  # an operator changed it meanwhile; what we read may predate that
        self.control = control
        self.metrics.hold.set(1.0 if control.hold else 0.0)
        if control.mode == "pinned" and control.pinned_version is not None:
            if self.served is None or self.served.version != control.pinned_version:
                await self.swap_to(control.pinned_version)
            return
        latest = await anyio.to_thread.run_sync(self.store.latest_policy)
        if latest is None:
            return
        current = -1 if self.served is None else self.served.version
        # Follow: the newest version that validates; never go back to an older one.
        for version in range(latest.version, current, -1):
            if version in self.refused:
                continue
            swapped, _ = await self.swap_to(version)
            if swapped:
                return

    async def watch(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive a store hiccup
                log.exception("policy watcher: sync failed; retrying")
            await asyncio.sleep(self.poll_s)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
