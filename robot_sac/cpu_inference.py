"""The actor's forward pass in numpy, for serving a few observations at a time on a CPU.

For one observation torch spends most of its time in per-operator overhead: the actor's
forward and sample take about 80 us in torch and about 20 us here. The service answers small
batches this way; larger batches, and GPUs, use torch. The tests check that both give the same
actions (deterministic) and the same distribution (stochastic).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robot_sac.networks import Actor, log_std_offset


def log_softplus(x: np.ndarray) -> np.ndarray:
    """``log(softplus(x))`` in numpy: :func:`robot_sac.distributions.log_softplus`'s formula.

    ``x`` below the cut ``2 log(eps)``, ``log(softplus(max(x, cut)))`` above it.
    """
    cut = 2.0 * math.log(np.finfo(x.dtype).eps)
    return np.where(x < cut, x, np.log(np.logaddexp(0.0, np.maximum(x, cut))))


class NumpyActor:
    """A frozen copy of an :class:`~robot_sac.networks.Actor`'s weights, evaluated in numpy."""

    def __init__(self, actor: Actor) -> None:
        linears = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
        # (in, out) layouts so that x @ w needs no transpose per call
        self.layers = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
            for m in linears
        ]
        self.family = actor.family
        self.action_dim = actor.action_dim
        low, high = actor.log_std_min, actor.log_std_max
        self._log_std = (low, high - low, log_std_offset(low, high))

    def unit_actions(
        self, obs: np.ndarray, deterministic: bool | np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Actions in ``[-1, 1]``, ``(B, action_dim)`` float32, for ``obs`` ``(B, obs_dim)``.

        Rows whose network output is not finite may come out NaN; call it under
        ``np.errstate(all="ignore")`` and let the safety envelope replace them.
        """
        h = obs
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = h @ w
            h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        first, second = h[:, : self.action_dim], h[:, self.action_dim :]
        if self.family == "tanh_normal":
            mode = np.tanh(first)
            if deterministic is True:
                return mode
            low, span, offset = self._log_std  # Actor._log_std: a shifted sigmoid squash
            sigmoid = 0.5 * (1.0 + np.tanh(0.5 * (second + offset)))
            scale = np.exp(low + span * sigmoid)
            noise = rng.standard_normal(first.shape, dtype=np.float32)
            sample = np.tanh(first + scale * noise)
        else:
            if deterministic is not False:
                # BoundedBeta.mode from raw outputs: tanh((log s1 - log s0) / 2), s = softplus(raw),
                # never through the concentrations 1 + s, which round to 1 below raw ~ -16.6.
                log_s = log_softplus(h)
                diff = log_s[:, : self.action_dim] - log_s[:, self.action_dim :]
                mode = np.tanh(0.5 * diff).astype(np.float32, copy=False)
                if deterministic is True:
                    return mode
            c1 = 1.0 + np.logaddexp(0.0, first)  # 1 + softplus: the Beta stays unimodal
            c0 = 1.0 + np.logaddexp(0.0, second)
            sample = (2.0 * rng.beta(c1, c0) - 1.0).astype(np.float32)
        if deterministic is False:
            return sample.astype(np.float32, copy=False)
        return np.where(np.asarray(deterministic)[:, None], mode, sample).astype(np.float32)
