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


def log_softplus_cut(dtype: torch.dtype) -> float:
    """Below ``2 log(eps)`` of ``dtype``, ``log(softplus(x))`` equals ``x`` to within rounding.

    ``log(softplus(x)) = x + log(log1p(e) / e)`` with ``e = exp(x)``, and the correction is about
    ``-e / 2``: under ``eps**2`` there, far below half an ulp of ``x`` (about -31.8 in float32,
    -72 in float64). Above the cut ``exp(x)`` is a normal float, so ``log1p`` of it is accurate in
    every math library (it is not for subnormals).
    """
    return 2.0 * math.log(torch.finfo(dtype).eps)


def log_softplus(x: Tensor) -> Tensor:
    """``log(softplus(x)) = log(log(1 + exp(x)))``, elementwise, accurate for every float ``x``.

    ``x`` itself below :func:`log_softplus_cut` (where ``softplus`` alone would lose precision and
    then underflow to 0 near -104 in float32, whose log is ``-inf``); ``log(softplus(x))`` above,
    with the input clamped to the cut so the branch not taken stays finite. ``-inf`` gives
    ``-inf``, ``inf`` gives ``inf``, NaN gives NaN. ``robot_sac.cpu_inference.log_softplus`` is
    the same in numpy.
    """
    cut = log_softplus_cut(x.dtype)
    return torch.where(x < cut, x, torch.log(F.softplus(torch.clamp(x, min=cut))))


def beta_mode_from_log_excess(log_excess1: Tensor, log_excess0: Tensor) -> Tensor:
    """The mode on ``[-1, 1]`` of ``Beta(1 + exp(l1), 1 + exp(l0))``, given ``l1`` and ``l0``.

    With ``a_i = c_i - 1 > 0`` the mode on ``[0, 1]`` is ``a1 / (a1 + a0) = sigmoid(l1 - l0)``, so
    on ``[-1, 1]`` it is ``2 sigmoid(d) - 1 = tanh(d / 2)`` with ``d = l1 - l0``: interior, finite
    and continuous for any finite ``l``. Equal values (infinite ones included) give the centre.
    """
    d = torch.where(log_excess1 == log_excess0, 0.0, log_excess1 - log_excess0)
    return torch.tanh(0.5 * d)


class BoundedBeta:
    """A Beta distribution on ``[0, 1]`` stretched onto ``[-1, 1]``, independent per dimension.

    Args:
        concentration1: the Beta's alpha, shape ``(*batch, action_dim)``, positive.
        concentration0: the Beta's beta, same shape, positive.
        raw: optional ``(raw1, raw0)``, same shapes, when the concentrations are
            ``1 + softplus(raw)`` (the actor's parameterisation; build those with
            :meth:`from_raw`). The mode is then computed from ``raw`` rather than from the
            rounded concentrations: in float32, ``1 + softplus(raw)`` is exactly 1 once ``raw`` is
            below about -16.6, which would lose the mode ``s1 / (s1 + s0)``.
    """

    def __init__(
        self,
        concentration1: Tensor,
        concentration0: Tensor,
        *,
        raw: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.concentration1 = concentration1
        self.concentration0 = concentration0
        self.raw = raw
        self.base = torch.distributions.Beta(concentration1, concentration0, validate_args=False)

    @classmethod
    def from_raw(cls, raw1: Tensor, raw0: Tensor) -> BoundedBeta:
        """The actor's Beta: concentrations ``1 + softplus(raw)``, each above 1 (unimodal)."""
        return cls(1.0 + F.softplus(raw1), 1.0 + F.softplus(raw0), raw=(raw1, raw0))

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
        """The most likely action, ``(*batch, action_dim)`` in ``[-1, 1]``; NaN only for NaN input.

        From ``raw`` (the actor's Beta): ``tanh((log softplus(raw1) - log softplus(raw0)) / 2)``,
        the exact mode ``2 s1 / (s1 + s0) - 1`` without rounding the concentrations.

        From the concentrations alone: where both exceed 1 the density has an interior peak at
        ``(c1 - 1) / (c1 + c0 - 2)`` on ``[0, 1]``. Otherwise the density peaks (or is unbounded)
        at an end: ``c1 <= 1 < c0`` gives -1, ``c0 <= 1 < c1`` gives +1, and when both are at most
        1 the end whose concentration is smaller wins, with the centre 0 on a tie (the uniform
        ``Beta(1, 1)`` and the symmetric U-shapes).
        """
        if self.raw is not None:
            # Equal infinite raw outputs (an overflowed network) give NaN here, not the centre.
            return torch.tanh(0.5 * (log_softplus(self.raw[0]) - log_softplus(self.raw[1])))
        c1, c0 = self.concentration1, self.concentration0
        a1, a0 = c1 - 1.0, c0 - 1.0
        interior = (a1 > 0.0) & (a0 > 0.0)
        # log(c - 1) written as a ratio of logs so huge concentrations cannot overflow a sum;
        # where a is not positive the value is not used (the guard keeps it finite).
        tiny = torch.finfo(a1.dtype).tiny
        inner = beta_mode_from_log_excess(a1.clamp_min(tiny).log(), a0.clamp_min(tiny).log())
        return torch.where(interior, inner, torch.sign(c1 - c0))
