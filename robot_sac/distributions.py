"""Bounded action distributions for SAC.

Both families put every action in ``[-1, 1]`` (the policy file maps that onto the robot's bounds)
and treat the last dimension as the event: log-probabilities are summed over it.

``TanhNormal``
    ``a = tanh(u)`` with ``u ~ Normal(loc, scale)``. The density of ``a`` follows from the change
    of variables ``log pi(a) = log N(u) - sum log(1 - tanh(u)^2)``. Written as
    ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))`` it is exact and finite for every
    float ``u``: no epsilon is added inside a logarithm, so the entropy bonus is not biased near
    the bounds, where a trained robot policy spends much of its time.

``BoundedBeta``
    ``a = 2x - 1`` with ``x ~ Beta(concentration1, concentration0)``. A Beta is already bounded,
    so no squashing is needed; its sample is differentiable through torch's implicit
    reparameterization (the gradient of the sample comes from differentiating the CDF, not from an
    explicit inverse). Stretching ``[0, 1]`` onto ``[-1, 1]`` costs ``log 2`` per dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _largest_below_one(dtype: torch.dtype) -> float:
    """The largest float below 1 in ``dtype`` (atanh of it is finite), as a Python number.

    A Python scalar, not a tensor: a scalar operand needs no host-to-device copy, so the
    distributions can run inside a captured CUDA graph.
    """
    return 1.0 - torch.finfo(dtype).eps / 2


def tanh_log_abs_det_jacobian(u: Tensor) -> Tensor:
    """``log |d tanh(u) / du| = log(1 - tanh(u)^2)``, elementwise and exact for any finite ``u``."""
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


class TanhNormal:
    """A diagonal Normal squashed by tanh onto ``[-1, 1]``.

    Args:
        loc: mean of the pre-tanh Normal, shape ``(*batch, action_dim)``.
        scale: its standard deviation, same shape, positive.
        log_scale: ``log(scale)`` when the caller has it already (the actor does), to save
            recomputing it; computed from ``scale`` otherwise.
    """

    def __init__(self, loc: Tensor, scale: Tensor, log_scale: Tensor | None = None) -> None:
        self.loc = loc
        self.scale = scale
        self.log_scale = scale.log() if log_scale is None else log_scale

    def _normal_log_prob(self, z: Tensor) -> Tensor:
        # z is the standardised pre-tanh value (u - loc) / scale.
        return -0.5 * z.square() - self.log_scale - _HALF_LOG_2PI

    def rsample_and_log_prob(self) -> tuple[Tensor, Tensor]:
        """A reparameterized sample and its log-probability.

        Returns:
            ``(action, log_prob)``: action of shape ``(*batch, action_dim)`` in ``[-1, 1]``,
            log_prob of shape ``(*batch,)``, both differentiable w.r.t. ``loc`` and ``scale``.
        """
        eps = torch.randn_like(self.loc)
        u = torch.addcmul(self.loc, self.scale, eps)
        # log N(u) - 2 (log 2 - u - softplus(-2u)), with (u - loc) / scale = eps exactly and the
        # constants gathered: the same exact formula in fewer kernels (this is the hot path).
        per_dim = 2.0 * (u + F.softplus(-2.0 * u)) - 0.5 * eps.square() - self.log_scale
        log_prob = per_dim.sum(-1) - u.shape[-1] * (_HALF_LOG_2PI + 2.0 * _LOG_2)
        return torch.tanh(u), log_prob

    def sample(self) -> Tensor:
        """A sample without its log-probability (acting, not learning)."""
        return torch.tanh(torch.addcmul(self.loc, self.scale, torch.randn_like(self.loc)))

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-density of ``action`` (shape ``(*batch, action_dim)``), summed over the last dim.

        The action is inverted with ``atanh`` after clamping to the largest float below 1 in
        magnitude, so an action on the bound gives a finite value. Note that in float32
        ``tanh(u)`` rounds to exactly 1 once ``u`` passes about 9: a stored action on the bound
        has lost its pre-tanh value, and this scores the clamped point instead. Where the sample
        is at hand, use the exact log-probability from :meth:`rsample_and_log_prob`.
        """
        limit = _largest_below_one(action.dtype)
        u = torch.atanh(action.clamp(-limit, limit))
        z = (u - self.loc) / self.scale
        return (self._normal_log_prob(z) - tanh_log_abs_det_jacobian(u)).sum(-1)

    @property
    def mode(self) -> Tensor:
        """The deterministic action ``tanh(loc)``."""
        return torch.tanh(self.loc)


class BoundedBeta:
    """A Beta distribution on ``[0, 1]`` stretched onto ``[-1, 1]``, independent per dimension.

    Args:
        concentration1: the Beta's alpha, shape ``(*batch, action_dim)``, positive.
        concentration0: the Beta's beta, same shape, positive.
    """

    def __init__(self, concentration1: Tensor, concentration0: Tensor) -> None:
        self.concentration1 = concentration1
        self.concentration0 = concentration0
        self.base = torch.distributions.Beta(concentration1, concentration0, validate_args=False)

    def rsample_and_log_prob(self) -> tuple[Tensor, Tensor]:
        """A sample differentiable by implicit reparameterization, and its log-probability.

        Returns:
            ``(action, log_prob)`` with shapes ``(*batch, action_dim)`` and ``(*batch,)``.
        """
        x = self._clamp_open(self.base.rsample())
        log_prob = (self.base.log_prob(x) - _LOG_2).sum(-1)
        return 2.0 * x - 1.0, log_prob

    def sample(self) -> Tensor:
        """A sample without its log-probability (acting, not learning)."""
        with torch.no_grad():
            return 2.0 * self._clamp_open(self.base.sample()) - 1.0

    def log_prob(self, action: Tensor) -> Tensor:
        """Log-density of ``action`` in ``[-1, 1]``, summed over the last dim.

        Points on the bound are moved to the nearest interior float so the result stays finite.
        """
        x = self._clamp_open((action + 1.0) * 0.5)
        return (self.base.log_prob(x) - _LOG_2).sum(-1)

    @staticmethod
    def _clamp_open(x: Tensor) -> Tensor:
        # Gamma-ratio samples in float32 can round to exactly 0 or 1, where the density is 0 or inf.
        return x.clamp(torch.finfo(x.dtype).tiny, _largest_below_one(x.dtype))

    @property
    def mode(self) -> Tensor:
        """The most likely action; the mean where the Beta has no interior mode."""
        c1, c0 = self.concentration1, self.concentration0
        interior = (c1 > 1.0) & (c0 > 1.0)
        x = torch.where(interior, (c1 - 1.0) / (c1 + c0 - 2.0).clamp_min(1e-12), c1 / (c1 + c0))
        return 2.0 * x - 1.0
