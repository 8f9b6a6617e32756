"""What this replica has seen lately: the robots that acted, and its traffic.

Both are in memory, bounded, and cheap to update on the act path (a dict move and a deque
append). They describe this replica only; the store has what every replica shares (holds,
episodes).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

# The robots remembered; beyond it the one that acted least recently is forgotten.
MAX_ROBOTS = 10_000
# Acts kept for the latency percentiles; at high rates the window is shorter than a minute.
MAX_SAMPLES = 20_000
WINDOW_S = 60.0


@dataclass
class RobotActivity:
    """One robot's acts here: when it last acted, which version answered, how many acts."""

    last_act_at: float
    last_version: int
    acts: int = 1


class RobotRegistry:
    """The robots that acted on this replica (those that named themselves with ``robot_id``)."""

    def __init__(self, capacity: int = MAX_ROBOTS) -> None:
        self.capacity = capacity
        self._robots: OrderedDict[str, RobotActivity] = OrderedDict()

    def acted(self, robot_id: str, version: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        seen = self._robots.get(robot_id)
        if seen is None:
            self._robots[robot_id] = RobotActivity(now, version)
            if len(self._robots) > self.capacity:
                self._robots.popitem(last=False)
            return
        seen.last_act_at, seen.last_version = now, version
        seen.acts += 1
        self._robots.move_to_end(robot_id)

    def snapshot(self) -> dict[str, RobotActivity]:
        """A copy, most recent last (safe to read in another thread)."""
        return {
            k: RobotActivity(v.last_act_at, v.last_version, v.acts) for k, v in self._robots.items()
        }


@dataclass(frozen=True)
class Traffic:
    window_s: float
    acts_per_s: float
    act_latency_p50_ms: float | None
    act_latency_p99_ms: float | None
    transitions_per_s: float


class TrafficMeter:
    """Acts (with their latency) and transitions over the last :data:`WINDOW_S` seconds."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self.started = time.monotonic()
        self._acts: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._transitions: deque[tuple[float, int]] = deque(maxlen=max_samples)

    def act(self, latency_s: float, now: float | None = None) -> None:
        self._acts.append((time.monotonic() if now is None else now, latency_s))

    def transitions(self, accepted: int, now: float | None = None) -> None:
        if accepted:
            self._transitions.append((time.monotonic() if now is None else now, accepted))

    def read(self, now: float | None = None) -> Traffic:
        """Rates and act latency percentiles over the window (shorter when the service is
        younger, or when more than ``max_samples`` acts came within it)."""
        now = time.monotonic() if now is None else now
        since = now - self.window_s
        acts = [(t, lat) for t, lat in list(self._acts) if t >= since]
        start = max(since, self.started)
        if len(acts) == self._acts.maxlen:  # the deque dropped acts inside the window
            start = acts[0][0]
        span = max(now - start, 1e-3)
        transitions = sum(n for t, n in list(self._transitions) if t >= start)
        p50 = p99 = None
        if acts:
            latencies = np.fromiter((lat for _, lat in acts), dtype=np.float64, count=len(acts))
            p50, p99 = (float(v) * 1e3 for v in np.percentile(latencies, [50, 99]))
        return Traffic(
            window_s=round(span, 3),
            acts_per_s=len(acts) / span,
            act_latency_p50_ms=p50,
            act_latency_p99_ms=p99,
            transitions_per_s=transitions / span,
        )
