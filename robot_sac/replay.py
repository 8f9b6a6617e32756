"""A preallocated ring buffer of transitions, sampled uniformly.

Every transition is one row of a single float32 tensor laid out as
``[obs | action | reward | next_obs | terminated]``, so a sample is one gather and the batch fields
are views into it. Actions are stored in the policy's ``[-1, 1]`` units.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# Default limits on the magnitude of a logged observation value and of a reward, for tasks that
# set no ``obs_bound`` / ``reward_bound``. Below them, every square the update takes is at most
# 1e12 and a sum of a batch's or a layer's squares (1e6 terms at most) stays near 1e18, while the
# soft Q-targets stay near r / (1 - gamma), 1e8 for gamma = 0.99: all far inside float32 (3.4e38)
# and Adam's squared gradients. A sensor or reward that glitches to 3.4e38 is finite float32, so
# the service's finite check lets it through; limits this loose refuse only such nonsense. A task
# whose values are legitimately larger states its own bounds.
DEFAULT_OBS_BOUND = 1e6
DEFAULT_REWARD_BOUND = 1e6


def sane_rows(
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    next_obs: np.ndarray,
    obs_bound: float = DEFAULT_OBS_BOUND,
    reward_bound: float = DEFAULT_REWARD_BOUND,
) -> np.ndarray:
    """A ``(N,)`` bool mask of the transitions fit to learn from: every observation value within
    ``obs_bound``, the reward within ``reward_bound`` (in magnitude), all of them and the action
    finite (NaN fails every comparison, so it is refused too).
    """
    return (
        (np.abs(obs) <= obs_bound).all(axis=1)
        & (np.abs(next_obs) <= obs_bound).all(axis=1)
        & (np.abs(reward) <= reward_bound)
        & np.isfinite(action).all(axis=1)
    )


class Batch(NamedTuple):
    """A mini-batch of ``B`` transitions (float32, on the buffer's device).

    Attributes:
        obs: ``(B, obs_dim)``.
        action: ``(B, action_dim)``, in ``[-1, 1]``.
        reward: ``(B,)``.
        next_obs: ``(B, obs_dim)``: the observation after the action, also for the last step of
            an episode (a truncated episode bootstraps from it).
        terminated: ``(B,)``, 1.0 where the episode ended in a terminal state (no bootstrap).
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor


ArrayLike = np.ndarray | Tensor | float  # a float: one reward or terminated flag


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions on ``device``.

    Args:
        capacity: most transitions held; the oldest are overwritten first.
        obs_dim, action_dim: sizes of one observation and one action.
        device: where the storage (and so every sampled batch) lives.
    """

    def __init__(
        self, capacity: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu"
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        self.device = torch.device(device)
        o, a = obs_dim, action_dim
        self._slices = (
            slice(0, o),
            slice(o, o + a),
            slice(o + a, o + a + 1),
            slice(o + a + 1, 2 * o + a + 1),
            slice(2 * o + a + 1, 2 * o + a + 2),
        )
        self.storage = torch.zeros(capacity, 2 * o + a + 2, dtype=torch.float32, device=self.device)
        self.pos = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: ArrayLike,
        action: ArrayLike,
        reward: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
    ) -> None:
        """Append ``N`` transitions in bulk (or one, without the leading dimension).

        Shapes: ``obs`` and ``next_obs`` ``(N, obs_dim)``, ``action`` ``(N, action_dim)``,
        ``reward`` and ``terminated`` ``(N,)``. If ``N`` exceeds the capacity only the newest
        ``capacity`` rows are kept.
        """
        obs_t = self._as_rows(obs, self.obs_dim, "obs")
        n = obs_t.shape[0]
        parts = (
            obs_t,
            self._as_rows(action, self.action_dim, "action"),
            self._as_rows(reward, 1, "reward"),
            self._as_rows(next_obs, self.obs_dim, "next_obs"),
            self._as_rows(terminated, 1, "terminated"),
        )
        for name, part in zip(Batch._fields, parts, strict=True):
            if part.shape[0] != n:
                raise ValueError(f"{name} has {part.shape[0]} rows, obs has {n}")
        rows = torch.cat(parts, dim=1)
        if n > self.capacity:
            self.pos = (self.pos + n - self.capacity) % self.capacity
            rows, n = rows[-self.capacity :], self.capacity
        first = min(n, self.capacity - self.pos)
        self.storage[self.pos : self.pos + first] = rows[:first]
        if first < n:
            self.storage[: n - first] = rows[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _as_rows(self, x: ArrayLike, width: int, name: str) -> Tensor:
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if t.dim() == 0 or (t.dim() == 1 and width > 1):
            t = t.unsqueeze(0)
        t = t.reshape(-1, width) if t.dim() == 1 else t
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"{name} must have {width} columns, got shape {tuple(t.shape)}")
        return t

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), device=self.device, generator=generator)
        return self.batch_from_rows(self.storage.index_select(0, idx))

    def batch_from_rows(self, rows: Tensor) -> Batch:
        """Split rows laid out like the storage into a :class:`Batch` of views."""
        obs, action, reward, next_obs, terminated = (rows[:, s] for s in self._slices)
        return Batch(obs, action, reward.squeeze(1), next_obs, terminated.squeeze(1))

    def all(self) -> Batch:
        """Every stored transition, oldest first (a copy)."""
        rows = (
            torch.roll(self.storage[: self.size], -self.pos, 0)
            if self.size == self.capacity
            else self.storage[: self.size].clone()
        )
        return self.batch_from_rows(rows)
