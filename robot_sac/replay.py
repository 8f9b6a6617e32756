"""A preallocated ring buffer of transitions, sampled uniformly or with a share of prior rows.

Every transition is one row of a single float32 tensor laid out as
``[obs | action | reward | next_obs | terminated]``, so a sample is one gather and the batch fields
are views into it. Actions are stored in the policy's ``[-1, 1]`` units.

Rows can be marked *prior* when added (demonstrations and an operator's corrections, as opposed to
the policy's own steps), and a sample can then draw a fixed share of its rows from them (RLPD's
symmetric sampling). The buffer keeps the prior rows' indices in a second ring, oldest first:
the storage overwrites its oldest rows first, so the prior rows it overwrites are always the
oldest in that ring and leave from its head. Adding and sampling stay vectorised whatever the
number of prior rows.
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


def prior_rows_per_batch(batch_size: int, prior_share: float) -> int:
    """Rows of a batch drawn from the prior rows: ``round(prior_share * batch_size)`` (Python's
    rounding, half to even), while there are prior rows to draw from."""
    return round(prior_share * batch_size)


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions on ``device``.

    Args:
        capacity: most transitions held; the oldest are overwritten first.
        obs_dim, action_dim: sizes of one observation and one action.
        device: where the storage (and so every sampled batch) lives.

    Attributes:
        prior_ring: ``(capacity,)`` int64 on ``device``: the storage rows of the prior
            transitions, oldest first, from slot ``prior_head`` for ``prior_size`` slots (wrapping).
        drawn_rows, drawn_prior_rows: rows sampled over the buffer's life, in all and from the
            prior rows (what a test or a status reads to see the shares).
        last_indices: the storage rows of the latest sample, the prior draws first.
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
        # Which storage rows hold prior transitions: on the host, so that counting the prior rows
        # an add overwrites needs no device sync.
        self._is_prior = np.zeros(capacity, dtype=bool)
        self.prior_ring = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.prior_head = 0
        self.prior_size = 0
        self.drawn_rows = 0
        self.drawn_prior_rows = 0
        self.last_indices: Tensor | None = None

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: ArrayLike,
        action: ArrayLike,
        reward: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        prior: np.ndarray | Tensor | bool | None = None,
    ) -> None:
        """Append ``N`` transitions in bulk (or one, without the leading dimension).

        Shapes: ``obs`` and ``next_obs`` ``(N, obs_dim)``, ``action`` ``(N, action_dim)``,
        ``reward`` and ``terminated`` ``(N,)``; ``prior`` ``(N,)`` bool (or one bool for all),
        True for the rows a sample's ``prior_share`` draws from; None: none of them. If ``N``
        exceeds the capacity only the newest ``capacity`` rows are kept.
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
        is_prior = self._prior_flags(prior, n)
        if n > self.capacity:
            self.pos = (self.pos + n - self.capacity) % self.capacity
            rows, n = rows[-self.capacity :], self.capacity
            is_prior = is_prior[-self.capacity :]
        self._index_prior(is_prior)
        first = min(n, self.capacity - self.pos)
        self.storage[self.pos : self.pos + first] = rows[:first]
        if first < n:
            self.storage[: n - first] = rows[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _prior_flags(self, prior: np.ndarray | Tensor | bool | None, n: int) -> np.ndarray:
        if prior is None:
            return np.zeros(n, dtype=bool)
        flags = torch.as_tensor(prior, dtype=torch.bool).reshape(-1).cpu().numpy()
        if flags.shape[0] == 1 and n != 1:
            return np.full(n, bool(flags[0]))
        if flags.shape[0] != n:
            raise ValueError(f"prior has {flags.shape[0]} rows, obs has {n}")
        return flags

    def _index_prior(self, is_prior: np.ndarray) -> None:
        """Update the prior ring for ``len(is_prior)`` rows about to be written from ``pos``."""
        if self.prior_size == 0 and not is_prior.any():
            return  # no prior row held or coming: nothing to evict or append
        written = (self.pos + np.arange(len(is_prior))) % self.capacity
        # The rows overwritten here are the oldest held, so their prior ones are the oldest in
        # the ring: they leave from its head.
        evicted = int(np.count_nonzero(self._is_prior[written]))
        self.prior_head = (self.prior_head + evicted) % self.capacity
        self.prior_size -= evicted
        self._is_prior[written] = is_prior
        new = written[is_prior]
        if len(new):
            slots = (self.prior_head + self.prior_size + np.arange(len(new))) % self.capacity
            self.prior_ring[torch.from_numpy(slots).to(self.device)] = torch.from_numpy(new).to(
                self.device
            )
            self.prior_size += len(new)

    def prior_rows(self) -> Tensor:
        """The storage rows of the prior transitions held, oldest first, ``(prior_size,)``."""
        slots = (
            self.prior_head + torch.arange(self.prior_size, device=self.device)
        ) % self.capacity
        return self.prior_ring[slots]

    def _as_rows(self, x: ArrayLike, width: int, name: str) -> Tensor:
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if t.dim() == 0 or (t.dim() == 1 and width > 1):
            t = t.unsqueeze(0)
        t = t.reshape(-1, width) if t.dim() == 1 else t
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"{name} must have {width} columns, got shape {tuple(t.shape)}")
        return t

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        prior_share: float = 0.0,
    ) -> Batch:
        """``batch_size`` transitions drawn with replacement: ``round(prior_share * batch_size)``
        of them uniformly from the prior rows (none while there are none), the rest uniformly
        from all rows. The prior draws come first in the batch."""
        idx = self.sample_indices(batch_size, generator, prior_share)
        return self.batch_from_rows(self.storage.index_select(0, idx))

    def sample_indices(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        prior_share: float = 0.0,
    ) -> Tensor:
        """The storage rows :meth:`sample` gathers, ``(batch_size,)`` int64, prior draws first."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if not 0.0 <= prior_share <= 1.0:
            raise ValueError(f"prior_share must be in [0, 1], got {prior_share}")
        k = prior_rows_per_batch(batch_size, prior_share) if self.prior_size else 0
        idx = torch.randint(self.size, (batch_size - k,), device=self.device, generator=generator)
        if k:
            picks = torch.randint(self.prior_size, (k,), device=self.device, generator=generator)
            slots = (picks + self.prior_head) % self.capacity
            idx = torch.cat([self.prior_ring.index_select(0, slots), idx])
        self.drawn_rows += batch_size
        self.drawn_prior_rows += k
        self.last_indices = idx
        return idx

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
