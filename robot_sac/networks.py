"""The actor and the critics (twin by default, an ensemble of ``n`` as an option).

The critics are one module: the ``n`` Q-functions keep their weights stacked and run as one
batched matrix product per layer, so all Q-values cost one kernel per layer instead of ``n`` Python
calls. That matters because SAC evaluates the critics three times per update.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot_sac.config import PolicyFamily
from robot_sac.distributions import BoundedBeta, TanhNormal


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``Linear -> ReLU`` for each hidden size, then a final ``Linear``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def log_std_offset(low: float, high: float) -> float:
    """The shift that makes the actor's log-std squash give 0 (scale 1) for a raw output of 0."""
    if not low < 0.0 < high:
        return 0.0
    return math.log(-low / high)


class Actor(nn.Module):
    """The policy network: observation -> the two parameters of the action distribution.

    For ``tanh_normal`` they are ``loc`` and ``scale``, the log of the scale squashed smoothly
    into ``[log_std_min, log_std_max]`` by a sigmoid shifted so that a raw output of 0 means
    ``scale = 1``: a fresh network explores widely, as an unsquashed log-std would (the usual
    unshifted squash starts near ``scale = 0.2`` and measurably slowed early learning on the Panda
    reach task). For
    ``beta`` they are the two concentrations, each ``1 + softplus(.)`` so the Beta stays
    unimodal and its mode is the deterministic action.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        family: PolicyFamily = "tanh_normal",
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        if family not in ("tanh_normal", "beta"):
            raise ValueError(f"unknown policy family {family!r}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.family: PolicyFamily = family
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.net = mlp(obs_dim, self.hidden, 2 * action_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs`` ``(*batch, obs_dim)`` -> two tensors ``(*batch, action_dim)``."""
        first, second = self.net(obs).chunk(2, dim=-1)
        if self.family == "tanh_normal":
            return first, self._log_std(second).exp()
        return 1.0 + F.softplus(first), 1.0 + F.softplus(second)

    def _log_std(self, raw: Tensor) -> Tensor:
        low, high = self.log_std_min, self.log_std_max
        return low + (high - low) * torch.sigmoid(raw + log_std_offset(low, high))

    def dist(self, obs: Tensor) -> TanhNormal | BoundedBeta:
        """The action distribution on ``[-1, 1]`` for ``obs`` ``(*batch, obs_dim)``."""
        first, second = self.net(obs).chunk(2, dim=-1)
        if self.family == "tanh_normal":
            log_std = self._log_std(second)
            return TanhNormal(first, log_std.exp(), log_scale=log_std)
        return BoundedBeta.from_raw(first, second)


# No intermediate value of a float32 forward pass may exceed this; 2**120 leaves a factor of 256
# below float32's largest value for the rounding of long sums.
_FLOAT32_SAFE_MAGNITUDE = 2.0**120


def overflow_free_obs_bound(actor: Actor) -> float:
    """The largest ``max |obs_i|`` for which no value in ``actor.net``'s float32 pass can overflow.

    Each layer maps a bound ``B`` on ``max |x|`` to ``B * max_i sum_j |W_ij| + max_i |b_i|`` (ReLU
    only shrinks magnitudes), so every layer's bound is affine in the observation's bound ``B_0``:
    ``a_l * B_0 + c_l``. Requiring each to stay below ``2**120`` gives the answer. Below it, the
    forward pass is finite whatever order a matrix product sums in; above it, whether a sum
    overflows depends on that order, which differs between numpy and torch and between batch
    sizes, so the serving paths treat such rows alike (see :class:`~robot_sac.policy.Policy`).

    Returns:
        A float32-representable bound (compare it with float32 observations exactly); -1.0 when
        even a zero observation is not safe (weights or biases too large).
    """
    a, c = 1.0, 0.0
    limit = _FLOAT32_SAFE_MAGNITUDE
    bound = math.inf
    with torch.no_grad():
        for m in actor.net:
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight.detach().double().abs()
            norm = float(w.sum(1).max())  # largest row sum: the inf -> inf operator norm
            shift = float(m.bias.detach().double().abs().max())
            a, c = a * norm, c * norm + shift
            if not (math.isfinite(c) and c <= limit):
                return -1.0
            if a > 0.0:
                bound = min(bound, (limit - c) / a)
    bound32 = np.float32(min(bound, float(np.finfo(np.float32).max)))
    if float(bound32) > bound:  # rounding to float32 must not loosen the bound
        bound32 = np.nextafter(bound32, np.float32(0.0))
    return float(bound32)


class TwinCritic(nn.Module):
    """``n`` independent Q-functions ``Q_i(s, a)`` evaluated in one batched pass.

    Each has the layout of :func:`mlp` (input ``obs_dim + action_dim``, ``hidden`` sizes, one
    output) and PyTorch's default ``nn.Linear`` initialisation. Layer ``k`` of all ``n`` networks
    is one weight ``(n, in_k, out_k)`` and one ``torch.baddbmm``. With ``layer_norm`` each hidden
    layer is ``Linear -> LayerNorm -> ReLU`` (as in RLPD and SERL), the LayerNorm's learnt scale
    and shift stacked per network too, ``(n, 1, out_k)``, initialised to 1 and 0.

    :meth:`parameters` yields every layer's weight, then every layer's bias, then (with
    ``layer_norm``) every hidden layer's LayerNorm scale, then every shift.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        n: int = 2,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n = n
        self.hidden = tuple(int(h) for h in hidden)
        self.layer_norm = layer_norm
        sizes = [obs_dim + action_dim, *self.hidden, 1]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n, h_in, h_out)) for h_in, h_out in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(n, 1, h_out)) for h_out in sizes[1:]
        )
        # Empty without layer_norm: then the parameters and the state dict are the plain MLPs'.
        norm_sizes = self.hidden if layer_norm else ()
        self.norm_scales = nn.ParameterList(nn.Parameter(torch.empty(n, 1, h)) for h in norm_sizes)
        self.norm_shifts = nn.ParameterList(nn.Parameter(torch.empty(n, 1, h)) for h in norm_sizes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # nn.Linear's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)
        # nn.LayerNorm's default: the identity affine map. Draws no random numbers, so the
        # linear layers start as they would without LayerNorm.
        for scale, shift in zip(self.norm_scales, self.norm_shifts, strict=True):
            scale.fill_(1.0)
            shift.zero_()

    def forward(self, obs_action: Tensor, params: Sequence[Tensor] | None = None) -> Tensor:
        """Q-values of every critic (or of the ones ``params`` holds).

        Args:
            obs_action: ``(B, obs_dim + action_dim)``, observation and action side by side.
            params: tensors in the order of :meth:`parameters` to use instead of this module's
                own: its detached weights, say, or the rows ``idx`` of each
                (``p.index_select(0, idx)``) to evaluate a subset ``(m,)`` of the critics.

        Returns:
            ``(n, B)``, or ``(m, B)`` for a subset.
        """
        params = list(self.parameters()) if params is None else params
        depth = len(self.weights)
        weights, biases = params[:depth], params[depth : 2 * depth]
        scales, shifts = params[2 * depth : 3 * depth - 1], params[3 * depth - 1 :]
        # A stride-0 view: the networks read one input without copying it once per network.
        x = obs_action.unsqueeze(0).expand(weights[0].shape[0], *obs_action.shape)
        for i in range(depth - 1):
            x = torch.baddbmm(biases[i], x, weights[i])
            if self.layer_norm:
                x = torch.addcmul(shifts[i], F.layer_norm(x, x.shape[-1:]), scales[i])
            x = torch.relu_(x)
        # The one-unit output layer as a matrix product too: 2-3 % more updates/s than a batched
        # dot product (mul + sum) on a 2-core CPU, measured on the whole update.
        return torch.baddbmm(biases[-1], x, weights[-1]).squeeze(-1)

    def q(self, index: int, obs_action: Tensor) -> Tensor:
        """Q-function ``index`` alone as a plain MLP, ``(B,)``; a reference for tests."""
        x = obs_action
        layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w[index] + b[index, 0]
            if i < layers - 1:
                if self.layer_norm:
                    x = F.layer_norm(
                        x,
                        x.shape[-1:],
                        self.norm_scales[i][index, 0],
                        self.norm_shifts[i][index, 0],
                    )
                x = torch.relu(x)
        return x.squeeze(-1)
