"""What the learner measures about itself for operators: the update-to-data ratio it actually
achieves, and its TensorBoard event files (every scalar against updates and against env steps).

TensorBoard layout (one run, ``<data dir>/learner/tb``): each scalar is logged twice,

- under its own tag (``loss/loss_actor``, ``sac/alpha``, ``data/utd_effective``,
  ``episode/mean_return``, ...) with the learner's **update count** as the step, and
- under the same tag prefixed ``env_steps/`` (``env_steps/loss/loss_actor``, ...) with the
  **environment steps** consumed (``env_steps`` in the status) as the step: the x-axis
  Stable-Baselines3 users know. TensorBoard groups tags by their first component, so these
  curves sit together in one ``env_steps`` section, apart from the per-update ones.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("robot_sac.learner")

UTD_WINDOW_S = 30.0  # how far back the effective update-to-data ratio looks
ENV_STEPS_PREFIX = "env_steps/"


class UtdWindow:
    """The update-to-data ratio achieved over a sliding window of about ``window_s`` seconds.

    :meth:`observe` records ``(time, updates, consumed)`` at most every ``window_s / 30``
    seconds; :meth:`ratio` compares the counts now with the newest record at least
    ``window_s`` old (or the oldest there is, early on): ``Δupdates / Δconsumed``.
    """

    def __init__(self, window_s: float = UTD_WINDOW_S) -> None:
        self.window_s = window_s
        self._every_s = window_s / 30
        self._marks: deque[tuple[float, int, int]] = deque()

    def observe(self, now: float, updates: int, consumed: int) -> None:
        if not self._marks or now - self._marks[-1][0] >= self._every_s:
            self._marks.append((now, updates, consumed))
        # keep one record at or before the window's start: the reference the ratio is taken from
        while len(self._marks) >= 2 and self._marks[1][0] <= now - self.window_s:
            self._marks.popleft()

    def ratio(self, updates: int, consumed: int) -> float | None:
        """Updates per consumed transition since the reference; None if none was consumed.

        A rollback sets the update count back: no negative ratio.
        """
        if not self._marks:
            return None
        _, updates_then, consumed_then = self._marks[0]
        new_data = consumed - consumed_then
        if new_data <= 0:
            return None
        return max(0, updates - updates_then) / new_data


class BehindAlarm:
    """When to warn that the learner trains far below its configured update-to-data ratio.

    Real robots are not paced: robots that log faster than the learner can train make it fall
    behind silently (fewer updates per step than configured, and learning per step worse). It
    warns when the ratio achieved over the window is below ``share`` of the target, once the
    learner has been training (not waiting for ``learning_starts``) for a whole window (before,
    the window holds the data it waited for), and then at most every ``every_s``.
    """

    def __init__(
        self, share: float = 0.5, window_s: float = UTD_WINDOW_S, every_s: float = 60.0
    ) -> None:
        self.share, self.window_s, self.every_s = share, window_s, every_s
        self._training_since: float | None = None
        self._warned_at = -float("inf")

    def check(
        self, now: float, training: bool, target: float, achieved: float | None
    ) -> str | None:
        """The warning to log now, or None."""
        if not training:
            self._training_since = None
            return None
        if self._training_since is None:
            self._training_since = now
        if (
            target <= 0
            or achieved is None
            or achieved >= self.share * target
            or now - self._training_since < self.window_s
            or now - self._warned_at < self.every_s
        ):
            return None
        self._warned_at = now
        return (
            f"the learner achieves an update-to-data ratio of {achieved:.2f}, under "
            f"{self.share:.0%} of the configured {target:g}: the robots log faster than it "
            "trains, so each step teaches less than configured (a GPU, fewer or slower robots, "
            "or a lower utd would match them)"
        )


class Board:
    """TensorBoard scalars, each against updates and (prefixed ``env_steps/``) env steps."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def scalars(
        self, values: Mapping[str, float | int | None], updates: int, env_steps: int | None
    ) -> None:
        """Log ``values`` at ``updates``, and at ``env_steps`` when it is known. A None value
        (a skipped update's loss, a ratio with no new data) is not a point on the curve."""
        for tag, value in values.items():
            if value is None:
                continue
            self._writer.add_scalar(tag, value, updates)
            if env_steps is not None:
                self._writer.add_scalar(ENV_STEPS_PREFIX + tag, value, env_steps)

    def close(self) -> None:
        self._writer.close()


def open_board(log_dir: Path) -> Board | None:
    """A :class:`Board` writing under ``log_dir``; None if tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        log.warning("tensorboard is not installed: no event files under %s", log_dir)
        return None
    return Board(SummaryWriter(log_dir=str(log_dir), flush_secs=10))
