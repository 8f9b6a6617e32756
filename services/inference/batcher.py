"""Micro-batching of act requests: one forward pass answers every request waiting for one.

Requests queue on the event loop; one task takes everything queued (up to ``max_batch_size``
rows) and runs a single forward pass in the inference thread. Requests that arrive while a pass
runs form the next batch, so a busy service batches by itself and a lone robot never waits for
company; ``max_wait_ms`` can add a short window on top.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from robot_sac.safety import SafetyEnvelope
from robot_sac.services.inference.metrics import ServiceMetrics
from robot_sac.services.inference.serving import Served, ServingState

# Up to this many rows numpy beats torch's per-operator overhead on a CPU; beyond, torch's
# threaded matrix products win.
NUMPY_MAX_ROWS = 16


class QueueFull(Exception):
    """The act queue holds ``max_queued_acts`` observations already: answer 503 at once."""


class DeadlineMissed(Exception):
    """The act could not be answered by its ``X-Deadline-Ms``: answer 504, never a late action."""


@dataclass
class _Job:
    obs: np.ndarray  # (k, obs_dim) float32
    deterministic: bool
    future: asyncio.Future[tuple[np.ndarray, int, bool]] = field(repr=False)
    robot_id: str | None = None  # a robot held one by one gets the safe action


class MicroBatcher:
    def __init__(
        self,
        state: ServingState,
        metrics: ServiceMetrics,
        max_batch_size: int,
        max_wait_s: float,
        threads: int,
        max_queued_rows: int = 4096,
    ) -> None:
        self.state, self.metrics = state, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.max_queued_rows = max_queued_rows
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._threads = threads
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inference", initializer=self._init_thread
        )
        self._envelope = SafetyEnvelope.from_spec(state.spec)
        self._last_jobs = 0

    def _init_thread(self) -> None:
        if self._threads > 0:
            torch.set_num_threads(self._threads)

    def held(self, rows: int) -> np.ndarray:
        """The task's safe action, ``rows`` times: ``(rows, action_dim)``."""
        return self._envelope.held(rows)

    async def act(
        self,
        obs: np.ndarray,
        deterministic: bool,
        deadline: float | None = None,
        robot_id: str | None = None,
    ) -> tuple[np.ndarray, int, bool]:
        """Actions for ``obs`` ``(k, obs_dim)``: ``(actions (k, action_dim), version, hold)``.

        ``hold`` is true, and the actions the task's safe action, while every robot or
        ``robot_id`` is held.

        ``deadline`` (``time.monotonic()`` seconds): raise :class:`DeadlineMissed` rather than
        answer after it. Raises :class:`QueueFull` at once when ``max_queued_rows`` observations
        already wait.
        """
        served = self.state.served
        if served is None:
            raise RuntimeError("no policy is loaded yet")
        rows = obs.shape[0]
        if self.state.holds(robot_id):  # a hold answers at once, without the policy
            return self.held(rows), served.version, True
        if self._queued_rows + rows > self.max_queued_rows:
            self.metrics.acts_shed.inc()
            raise QueueFull(
                f"the service is saturated: {self._queued_rows} observations are waiting for a "
                "forward pass"
            )
        future: asyncio.Future[tuple[np.ndarray, int, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(_Job(obs, deterministic, future, robot_id))
        self._queued_rows += rows
        self._wakeup.set()
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, deadline - time.monotonic())
        except asyncio.TimeoutError:  # wait_for cancelled the job: the batcher skips it
            self.metrics.acts_late.inc()
            raise DeadlineMissed("the act could not be answered before its X-Deadline-Ms") from None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                # When robots are many, let requests whose bytes have already arrived be parsed
                # and queued first; a lone robot (one job now, one in the last batch) skips it.
                if len(self._queue) > 1 or self._last_jobs > 1:
                    await asyncio.sleep(0)
                if self.max_wait_s > 0 and self._rows() < self.max_batch_size:
                    await asyncio.sleep(self.max_wait_s)
                jobs = self._take()
                if not jobs:  # every job taken had been given up (deadline, client gone)
                    continue
                self._last_jobs = len(jobs)
                served = self.state.served  # one reference for the whole batch
                assert served is not None
                try:
                    actions, replaced = await loop.run_in_executor(
                        self._executor, self._forward, served, jobs
                    )
                except Exception as exc:  # never leave a robot waiting on a dead future
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                holds = self.state.holds
                start = 0
                for job in jobs:
                    k = job.obs.shape[0]
                    hold = holds(job.robot_id)
                    result = self.held(k) if hold else actions[start : start + k]
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result((result, served.version, hold))
                    start += k
                if replaced:
                    self.metrics.nonfinite_actions.inc(replaced)

    def _rows(self) -> int:
        return self._queued_rows

    def _take(self) -> list[_Job]:
        """The next batch: queued jobs up to ``max_batch_size`` rows (a larger job goes alone);
        jobs whose future is already done (given up) are dropped, not computed."""
        jobs: list[_Job] = []
        rows = 0
        while self._queue:
            k = self._queue[0].obs.shape[0]
            if jobs and rows + k > self.max_batch_size:
                break
            job = self._queue.popleft()
            self._queued_rows -= k
            if job.future.done():
                continue
            jobs.append(job)
            rows += k
        return jobs

    def _forward(self, served: Served, jobs: list[_Job]) -> tuple[np.ndarray, int]:
        policy = served.policy
        obs = jobs[0].obs if len(jobs) == 1 else np.concatenate([j.obs for j in jobs])
        flags = [j.deterministic for j in jobs]
        mixed = not (all(flags) or not any(flags))
        per_row = np.repeat(np.asarray(flags), [j.obs.shape[0] for j in jobs]) if mixed else None
        self.metrics.forward_passes.inc()
        self.metrics.batch_size.observe(obs.shape[0])
        if policy.device.type == "cpu" and obs.shape[0] <= NUMPY_MAX_ROWS:
            actions, bad = policy.act_numpy(obs, flags[0] if per_row is None else per_row)
            return actions, int(bad.sum())
        deterministic: bool | torch.Tensor = flags[0]
        if per_row is not None:
            deterministic = torch.from_numpy(per_row).to(policy.device)
        actions_t, bad_t = policy.act_tensor(torch.from_numpy(obs).to(policy.device), deterministic)
        return actions_t.cpu().numpy(), int(bad_t.sum())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
