"""The pathwise gradient of SAC's policy objective against deterministic quadrature.

For a 1-D action and a fixed critic Q, J(theta) = E_{a~pi_theta}[alpha log pi(a) - Q(a)] is an
integral that Gauss quadrature evaluates to near machine precision; its gradient, by autograd
through the quadrature sum, is an independent reference for the Monte-Carlo estimate SAC uses
(reparameterized for TanhNormal, implicitly reparameterized for BoundedBeta).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robot_sac.distributions import BoundedBeta, TanhNormal

ALPHA = 0.3


def critic(a: torch.Tensor) -> torch.Tensor:
    return torch.sin(3.0 * a) - 2.0 * (a - 0.3) ** 2


def monte_carlo_gradient(make_dist, params, batches: int = 20, n: int = 50_000):
    """Mean and standard error of the pathwise gradient over independent batches."""
    grads = []
    for _ in range(batches):
        for p in params:
            p.grad = None
        action, logp = make_dist().rsample_and_log_prob()
        (ALPHA * logp - critic(action.squeeze(-1))).mean().backward()
        grads.append(torch.stack([p.grad.detach().clone() for p in params]))
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / math.sqrt(batches)


def test_tanh_normal_pathwise_gradient_matches_gauss_hermite():
    torch.manual_seed(0)
    loc0, scale0 = 0.4, 0.6
    loc = torch.tensor(loc0, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(scale0, dtype=torch.float64, requires_grad=True)

    # Reference: u = loc + sqrt(2) scale x_i, weights w_i / sqrt(pi); log pi(tanh u) by the
    # textbook formula log N(u) - log(1 - tanh(u)^2), via log1p in float64.
    x, w = np.polynomial.hermite.hermgauss(120)
    x, w = torch.tensor(x), torch.tensor(w) / math.sqrt(math.pi)
    u = loc + math.sqrt(2.0) * scale * x
    log_normal = -0.5 * ((u - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    log_pi = log_normal - torch.log1p(-(torch.tanh(u) ** 2))
    objective = (w * (ALPHA * log_pi - critic(torch.tanh(u)))).sum()
    exact = torch.stack(torch.autograd.grad(objective, [loc, scale]))

    def make():
        return TanhNormal(loc.expand(50_000, 1), scale.expand(50_000, 1))

    mean, se = monte_carlo_gradient(make, [loc, scale])
    assert bool(((mean - exact).abs() < 5 * se + 1e-4).all()), (mean, exact, se)
    # The check has teeth: the gradient is far from zero compared with its error bar.
    assert bool((exact.abs() > 20 * se).all())


def test_bounded_beta_implicit_gradient_matches_gauss_legendre():
    torch.manual_seed(0)
    c1 = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    c0 = torch.tensor(3.5, dtype=torch.float64, requires_grad=True)

    # Reference: integrate over x in (0, 1) with Gauss-Legendre; a = 2x - 1 and
    # log pi(a) = log Beta(x; c1, c0) - log 2, the density written out with lgamma.
    x, w = np.polynomial.legendre.leggauss(200)
    x, w = torch.tensor((x + 1) / 2), torch.tensor(w / 2)
    log_beta = (
        (c1 - 1) * torch.log(x)
        + (c0 - 1) * torch.log1p(-x)
        + torch.lgamma(c1 + c0)
        - torch.lgamma(c1)
        - torch.lgamma(c0)
    )
    density = log_beta.exp()
    objective = (w * density * (ALPHA * (log_beta - math.log(2)) - critic(2 * x - 1))).sum()
    exact = torch.stack(torch.autograd.grad(objective, [c1, c0]))

    def make():
        return BoundedBeta(c1.expand(50_000, 1), c0.expand(50_000, 1))

    mean, se = monte_carlo_gradient(make, [c1, c0])
    assert bool(((mean - exact).abs() < 5 * se + 1e-4).all()), (mean, exact, se)
    assert bool((exact.abs() > 20 * se).all())
