"""Observation normalisation: running statistics, and the one formula every path applies.

A robot's observation mixes units (metres, radians, newtons, velocities), so some inputs are a
thousand times larger than others, and the networks learn slowly from the small ones. With
``SACConfig.obs_normalization`` the learner keeps a running mean and variance of every
observation it takes from the log (:class:`RunningMeanStd`), trains on normalised observations,
and freezes the statistics into each version it publishes (:class:`ObsNormalization`); the version
file carries them and every serving path applies the same normalisation before the actor.

The normalisation is Stable-Baselines3's ``VecNormalize``'s::

    x = clip((obs - mean) / std, -clip, clip),    std = sqrt(var + eps)

``var`` is the population variance (``ddof=0``) of every observation seen. Before any data the
statistics are mean 0 and variance 1, so the formula is the identity up to the clip.

numpy and torch give bit-identical results: in float32 the subtraction, the division and the clip
are each one correctly rounded IEEE operation, whichever library (and device) runs them, and no
step sums in an order that could differ. The clip also bounds what the network sees: any finite
observation becomes an input within ``[-clip, clip]``, including one so large that ``obs - mean``
overflows to infinity (clipped like any other large value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import torch
from torch import Tensor

from robot_sac.replay import Batch

DEFAULT_CLIP = 10.0
DEFAULT_EPS = 1e-8
_F32 = np.finfo(np.float32)


class RunningMeanStd:
    """The mean and population variance of every observation given to :meth:`update`.

    Batches are merged with Chan et al.'s parallel update of the mean and of ``m2``, the sum of
    squared deviations from the mean, in float64: merging a batch of ``m`` rows with mean ``b``
    and ``m2_b`` into ``n`` rows with mean ``a`` and ``m2_a``::

        delta = b - a
        mean = a + delta * m / (n + m)
        m2 = m2_a + m2_b + delta**2 * n * m / (n + m)

    Exact in exact arithmetic whatever the batch sizes, and numerically stable (no
    ``E[x**2] - E[x]**2`` cancellation).

    Attributes:
        count: the number of observations seen.
        mean: ``(dim,)`` float64.
        m2: ``(dim,)`` float64, the sum of squared deviations from :attr:`mean`.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Merge the rows of ``batch`` ``(m, dim)`` (any float dtype) into the statistics."""
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"batch must be (m, {self.dim}), got shape {x.shape}")
        m = x.shape[0]
        if m == 0:
            return
        b_mean = x.mean(axis=0)
        b_m2 = np.square(x - b_mean).sum(axis=0)
        n = self.count
        total = n + m
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + b_m2 + np.square(delta) * (n * m / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        """The population variance ``(dim,)`` float64; ones before any observation."""
        if self.count == 0:
            return np.ones(self.dim, np.float64)
        return self.m2 / self.count

    def frozen(self, clip: float = DEFAULT_CLIP, eps: float = DEFAULT_EPS) -> ObsNormalization:
        """The statistics as of now, as the float32 normalisation a version ships.

        ``std`` is kept inside float32's positive normal range, so that it is never 0 or infinite
        there: a feature that never changed, with ``eps = 0``, would otherwise give a 0 that no
        version may carry; observations near float32's limits, an infinite one.
        """
        std = np.clip(np.sqrt(self.var + eps), float(_F32.tiny), float(_F32.max))
        return ObsNormalization(
            mean=self.mean.astype(np.float32),
            std=std.astype(np.float32),
            clip=clip,
            eps=eps,
            count=self.count,
        )

    def state_dict(self) -> dict[str, Tensor | int]:
        """Tensors and an int, for a checkpoint that loads with ``weights_only=True``."""
        return {
            "count": self.count,
            "mean": torch.from_numpy(self.mean.copy()),
            "m2": torch.from_numpy(self.m2.copy()),
        }

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        """Restore :meth:`state_dict`'s output; raises ``ValueError`` for a wrong size."""
        mean = torch.as_tensor(state["mean"], dtype=torch.float64).numpy().copy()
        m2 = torch.as_tensor(state["m2"], dtype=torch.float64).numpy().copy()
        count = int(state["count"])
        if mean.shape != (self.dim,) or m2.shape != (self.dim,) or count < 0:
            raise ValueError(
                f"normalisation statistics of shapes {mean.shape}, {m2.shape} and count {count} "
                f"do not fit observations of {self.dim} values"
            )
        self.mean, self.m2, self.count = mean, m2, count


@dataclass(frozen=True, eq=False)
class ObsNormalization:
    """Frozen statistics and the clip: what a version file carries and every serving path applies.

    Attributes:
        mean: ``(obs_dim,)`` float32.
        std: ``(obs_dim,)`` float32, ``sqrt(var + eps)``, each above 0.
        clip: normalised values are clipped into ``[-clip, clip]``; a float32 value above 0.
        eps: added to the variance before the square root (kept to describe the file).
        count: how many observations the statistics summarise.
    """

    mean: np.ndarray
    std: np.ndarray
    clip: float = DEFAULT_CLIP
    eps: float = DEFAULT_EPS
    count: int = 0
    _tensors: dict[torch.device, tuple[Tensor, Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float32)
        std = np.array(self.std, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != std.shape or mean.size == 0:
            raise ValueError(
                f"mean and std must be two vectors of one length, got {mean.shape}, {std.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        if not (std > 0).all():
            raise ValueError(f"std must be above 0; entry {int(np.argmin(std))} is {std.min()}")
        # The clip is compared with float32 values; keeping it float32-exact means numpy and
        # torch, which both round a Python float bound to float32, clip at the same value.
        clip32 = float(np.float32(self.clip)) if math.isfinite(self.clip) else math.nan
        if not (clip32 > 0 and math.isfinite(clip32)):
            raise ValueError(f"clip must be finite and above 0 in float32, got {self.clip}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be finite and at least 0, got {self.eps}")
        if self.count < 0:
            raise ValueError(f"count must be at least 0, got {self.count}")
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "clip", clip32)

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def tensors(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as float32 tensors on ``device``, made once per device."""
        device = torch.device(device)
        cached = self._tensors.get(device)
        if cached is None:
            cached = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
            self._tensors[device] = cached
        return cached

    @overload
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...
    @overload
    def __call__(self, obs: Tensor) -> Tensor: ...
    def __call__(self, obs: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """``obs`` ``(..., obs_dim)`` float32, numpy or torch, normalised in the same library."""
        if isinstance(obs, Tensor):
            mean, std = self.tensors(obs.device)
            return normalize(obs, mean, std, self.clip)
        return normalize(obs, self.mean, self.std, self.clip)


@overload
def normalize(obs: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray: ...
@overload
def normalize(obs: Tensor, mean: Tensor, std: Tensor, clip: float) -> Tensor: ...
def normalize(
    obs: np.ndarray | Tensor,
    mean: np.ndarray | Tensor,
    std: np.ndarray | Tensor,
    clip: float,
) -> np.ndarray | Tensor:
    """``clip((obs - mean) / std, -clip, clip)`` in numpy or torch, float32, bit-identical.

    A NaN observation stays NaN (both libraries' clips pass NaN through), so it reaches the
    network and the safety envelope answers the safe action; infinity becomes ``±clip``.
    """
    if isinstance(obs, Tensor):
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        return torch.clamp((obs - mean) / std, -clip, clip)
    assert isinstance(mean, np.ndarray) and isinstance(std, np.ndarray)
    with np.errstate(over="ignore", invalid="ignore"):  # obs - mean may overflow: clipped
        x = np.subtract(obs, mean, dtype=np.float32)
        x /= std
    c = np.float32(clip)
    return np.clip(x, -c, c, out=x)


class LiveNormalization:
    """The learner's current statistics as device tensors, updated in place.

    A captured CUDA graph (:class:`~robot_sac.cuda_graphs.GraphedUpdate`) reads the tensors it
    was captured with: :meth:`set` copies new values into them, never rebinds them, so each
    replay normalises with the statistics of that moment.
    """

    def __init__(self, dim: int, device: str | torch.device, clip: float = DEFAULT_CLIP) -> None:
        self.clip = float(np.float32(clip))
        self.mean = torch.zeros(dim, dtype=torch.float32, device=device)
        self.std = torch.ones(dim, dtype=torch.float32, device=device)

    def set(self, frozen: ObsNormalization) -> None:
        """Copy ``frozen``'s mean and std into the device tensors (in place)."""
        # copies: the frozen arrays are read-only, which torch.from_numpy warns about
        self.mean.copy_(torch.from_numpy(frozen.mean.copy()))
        self.std.copy_(torch.from_numpy(frozen.std.copy()))

    def batch(self, batch: Batch) -> Batch:
        """``batch`` with ``obs`` and ``next_obs`` normalised (the rest untouched)."""
        return batch._replace(
            obs=normalize(batch.obs, self.mean, self.std, self.clip),
            next_obs=normalize(batch.next_obs, self.mean, self.std, self.clip),
        )
