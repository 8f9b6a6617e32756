"""TanhNormal and BoundedBeta against torch's own distributions and float64 references."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Beta,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

from robot_sac.distributions import BoundedBeta, TanhNormal


def reference_tanh_normal(loc: torch.Tensor, scale: torch.Tensor) -> TransformedDistribution:
    return TransformedDistribution(Normal(loc, scale), [TanhTransform()])


@pytest.fixture
def params64() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    loc = torch.empty(512, 3, dtype=torch.float64).uniform_(-1.0, 1.0, generator=g)
    scale = torch.empty(512, 3, dtype=torch.float64).uniform_(0.2, 1.0, generator=g)
    return loc, scale


def test_tanh_normal_log_prob_matches_torch_transformed_distribution(params64):
    loc, scale = params64
    ref = reference_tanh_normal(loc, scale)
    action = ref.sample()
    ours = TanhNormal(loc, scale).log_prob(action)
    expected = ref.log_prob(action).sum(-1)
    assert ours.shape == (512,)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_tanh_normal_sample_log_prob_matches_torch(params64):
    loc, scale = params64
    torch.manual_seed(1)
    action, logp = TanhNormal(loc, scale).rsample_and_log_prob()
    assert action.shape == loc.shape and logp.shape == (512,)
    assert bool((action.abs() <= 1).all())
    expected = reference_tanh_normal(loc, scale).log_prob(action).sum(-1)
    torch.testing.assert_close(logp, expected, atol=1e-6, rtol=0)


def test_tanh_normal_samples_follow_the_pushforward():
    # Mean of tanh(u) against Gauss-Hermite quadrature of E[tanh(u)], u ~ N(0.7, 0.5).
    torch.manual_seed(0)
    loc, scale = torch.full((400_000, 1), 0.7), torch.full((400_000, 1), 0.5)
    action, _ = TanhNormal(loc, scale).rsample_and_log_prob()
    x, w = np.polynomial.hermite.hermgauss(60)
    exact = float(np.sum(w * np.tanh(0.7 + math.sqrt(2) * 0.5 * x)) / math.sqrt(math.pi))
    se = float(action.std()) / math.sqrt(action.numel())
    assert abs(float(action.mean()) - exact) < 5 * se


def test_tanh_normal_saturated_float32_is_finite_with_finite_gradients():
    for sign in (1.0, -1.0):
        loc = torch.full((256, 4), 12.0 * sign, requires_grad=True)
        scale = torch.full((256, 4), 0.05, requires_grad=True)
        dist = TanhNormal(loc, scale)
        action, logp = dist.rsample_and_log_prob()
        assert bool(torch.isfinite(logp).all())
        (logp.sum() + action.sum()).backward()
        assert bool(torch.isfinite(loc.grad).all()) and bool(torch.isfinite(scale.grad).all())
        # In float32, tanh(12) rounds to exactly +-1: the sample sits on the bound.
        assert bool((action.abs() == 1.0).all())


def test_tanh_normal_saturated_log_prob_is_exact_not_fudged():
    # The exact log-density at u = 12 computed in float64 with log1p; an epsilon inside the log
    # (log(1 - a^2 + 1e-6)) would be off by about 16 nats per dimension here.
    torch.manual_seed(0)
    loc = torch.full((1000, 2), 12.0)
    scale = torch.full((1000, 2), 0.05)
    dist = TanhNormal(loc, scale)
    _, logp = dist.rsample_and_log_prob()
    torch.manual_seed(0)
    u = (loc + scale * torch.randn_like(loc)).double()
    z = (u - 12.0) / 0.05
    log_normal = -0.5 * z.square() - math.log(0.05) - 0.5 * math.log(2 * math.pi)
    expected = (log_normal - torch.log1p(-torch.tanh(u).square())).sum(-1)
    torch.testing.assert_close(logp.double(), expected, atol=2e-3, rtol=1e-5)


def test_tanh_normal_log_prob_of_actions_on_the_bound_is_finite():
    loc = torch.zeros(3, 2, requires_grad=True)
    scale = torch.ones(3, 2, requires_grad=True)
    action = torch.tensor([[1.0, -1.0], [1.0, 1.0], [0.999999, -0.999999]])
    logp = TanhNormal(loc, scale).log_prob(action)
    assert bool(torch.isfinite(logp).all())
    logp.sum().backward()
    assert bool(torch.isfinite(loc.grad).all()) and bool(torch.isfinite(scale.grad).all())
    # Float64 keeps its own, much tighter clamp.
    logp64 = TanhNormal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert math.isfinite(float(logp64.log_prob(torch.ones(2, dtype=torch.float64))))


def test_tanh_normal_mode_is_tanh_of_loc():
    loc = torch.tensor([[-3.0, 0.0, 0.4]])
    torch.testing.assert_close(TanhNormal(loc, torch.ones_like(loc)).mode, torch.tanh(loc))


@pytest.fixture
def beta_params64() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    c1 = torch.empty(256, 2, dtype=torch.float64).uniform_(0.5, 6.0, generator=g)
    c0 = torch.empty(256, 2, dtype=torch.float64).uniform_(0.5, 6.0, generator=g)
    return c1, c0


def test_bounded_beta_log_prob_is_beta_with_affine_change_of_variables(beta_params64):
    c1, c0 = beta_params64
    ref = TransformedDistribution(Beta(c1, c0), [AffineTransform(-1.0, 2.0)])
    action = ref.sample().clamp(-1 + 1e-9, 1 - 1e-9)
    expected = ref.log_prob(action).sum(-1)
    torch.testing.assert_close(BoundedBeta(c1, c0).log_prob(action), expected, atol=1e-9, rtol=0)
    direct = (Beta(c1, c0).log_prob((action + 1) / 2) - math.log(2)).sum(-1)
    torch.testing.assert_close(BoundedBeta(c1, c0).log_prob(action), direct, atol=1e-9, rtol=0)


def test_bounded_beta_sample_log_prob_and_range(beta_params64):
    c1, c0 = beta_params64
    torch.manual_seed(0)
    action, logp = BoundedBeta(c1, c0).rsample_and_log_prob()
    assert bool((action.abs() <= 1).all())
    ref = TransformedDistribution(Beta(c1, c0), [AffineTransform(-1.0, 2.0)])
    torch.testing.assert_close(logp, ref.log_prob(action).sum(-1), atol=1e-8, rtol=0)


def test_bounded_beta_density_integrates_to_one():
    # Gauss-Legendre on [-1, 1]: a deterministic check of the log 2 normalisation.
    x, w = np.polynomial.legendre.leggauss(200)
    a = torch.tensor(x, dtype=torch.float64).unsqueeze(-1)
    for c1, c0 in [(2.0, 3.0), (4.5, 1.5), (1.0, 1.0)]:
        dist = BoundedBeta(torch.full_like(a, c1), torch.full_like(a, c0))
        total = float((dist.log_prob(a).exp() * torch.tensor(w, dtype=torch.float64)).sum())
        assert total == pytest.approx(1.0, abs=1e-6)


def test_bounded_beta_mode_and_mean():
    c1, c0 = torch.tensor([[3.0, 3.0, 0.5]]), torch.tensor([[3.0, 2.0, 0.5]])
    mode = BoundedBeta(c1, c0).mode
    # Beta(3,3) peaks at 0.5 -> 0; Beta(3,2) at 2/3 -> 1/3; Beta(.5,.5) is a symmetric U, whose
    # two unbounded ends tie: the centre 0 is answered.
    torch.testing.assert_close(mode, torch.tensor([[0.0, 1.0 / 3.0, 0.0]]))
    torch.manual_seed(0)
    action, _ = BoundedBeta(
        torch.full((200_000, 1), 2.0), torch.full((200_000, 1), 5.0)
    ).rsample_and_log_prob()
    assert float(action.mean()) == pytest.approx(2 * 2 / 7 - 1, abs=5 * float(action.std()) / 447)


def test_bounded_beta_is_finite_at_the_edges_in_float32():
    c1 = torch.full((4096, 2), 0.3, requires_grad=True)
    c0 = torch.full((4096, 2), 40.0, requires_grad=True)
    action, logp = BoundedBeta(c1, c0).rsample_and_log_prob()
    assert bool(torch.isfinite(logp).all()) and bool((action.abs() <= 1).all())
    logp.mean().backward()
    assert bool(torch.isfinite(c1.grad).all()) and bool(torch.isfinite(c0.grad).all())
    edge = BoundedBeta(torch.full((2, 1), 3.0), torch.full((2, 1), 3.0))
    assert bool(torch.isfinite(edge.log_prob(torch.tensor([[1.0], [-1.0]]))).all())


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_sample_follows_the_same_distribution_as_rsample(family):
    # Acting draws with sample() (no log-prob); it must be the distribution training assumes.
    torch.manual_seed(0)
    n = 100_000
    if family == "tanh_normal":
        dist = TanhNormal(torch.full((n, 2), 0.5), torch.full((n, 2), 0.8))
    else:
        dist = BoundedBeta(torch.full((n, 2), 2.0), torch.full((n, 2), 4.0))
    fast = dist.sample()
    slow, _ = dist.rsample_and_log_prob()
    assert fast.shape == slow.shape and bool((fast.abs() <= 1).all())
    se = float(slow.std()) / math.sqrt(n)
    assert abs(float(fast.mean()) - float(slow.mean())) < 6 * se
    assert abs(float(fast.std()) - float(slow.std())) < 0.01
    # the quartiles agree too (a distribution check, not only the first two moments)
    q = torch.tensor([0.25, 0.5, 0.75])
    torch.testing.assert_close(fast[:, 0].quantile(q), slow[:, 0].quantile(q), atol=0.01, rtol=0)


def beta_mode_by_grid(c1: float, c0: float) -> float:
    """The argmax on [-1, 1] of the Beta log-density, by brute force on a fine float64 grid."""
    x = np.linspace(0.0, 1.0, 200_001)
    with np.errstate(divide="ignore", invalid="ignore"):
        logpdf = (c1 - 1.0) * np.log(x) + (c0 - 1.0) * np.log1p(-x)
    logpdf[0] = np.inf if c1 < 1 else (0.0 if c1 == 1 and c0 >= 1 else logpdf[0])
    logpdf[-1] = np.inf if c0 < 1 else (0.0 if c0 == 1 and c1 >= 1 else logpdf[-1])
    logpdf = np.nan_to_num(logpdf, nan=-np.inf)
    return float(2.0 * x[int(np.argmax(logpdf))] - 1.0)


@pytest.mark.parametrize(
    ("c1", "c0", "expected"),
    [
        (3.0, 2.0, 1.0 / 3.0),  # interior
        (2.0, 7.0, 2 * (1.0 / 7.0) - 1.0),  # interior
        (1.0, 2.0, -1.0),  # c1 <= 1 < c0: density 2(1 - x), largest at 0
        (0.3, 5.0, -1.0),
        (2.0, 1.0, 1.0),  # c0 <= 1 < c1
        (5.0, 0.3, 1.0),
        (0.5, 0.8, -1.0),  # both below 1: the end with the smaller concentration
        (0.8, 0.5, 1.0),
        (1.0, 0.5, 1.0),  # (1 - x)^-0.5 grows without bound at 1
        (0.5, 1.0, -1.0),
        (0.5, 0.5, 0.0),  # a tie: the centre
        (1.0, 1.0, 0.0),  # uniform: the centre
        (1.0 + 2**-20, 1.0 + 2**-21, 2 * (2.0 / 3.0) - 1),  # barely interior, exact in float32
        (3e38, 1e38, 2 * 0.75 - 1),  # huge: no overflow in c1 + c0
    ],
)
def test_bounded_beta_mode_for_any_concentrations(c1: float, c0: float, expected: float):
    mode = BoundedBeta(torch.tensor([c1]), torch.tensor([c0])).mode
    assert float(mode[0]) == pytest.approx(expected, abs=2e-6)
    if max(c1, c0) < 100 and max(c1, c0) > 1:  # a unique argmax: brute force agrees with it
        assert float(mode[0]) == pytest.approx(beta_mode_by_grid(c1, c0), abs=2e-5)


def test_bounded_beta_mode_is_never_nan_on_a_grid_of_concentrations():
    values = torch.tensor([1e-30, 1e-3, 0.5, 1.0 - 2**-24, 1.0, 1.0 + 2**-23, 1.5, 2.0, 1e10, 3e38])
    c1, c0 = torch.meshgrid(values, values, indexing="ij")
    mode = BoundedBeta(c1, c0).mode
    assert bool(torch.isfinite(mode).all()) and bool((mode.abs() <= 1).all())
    # swapping the concentrations mirrors the mode
    torch.testing.assert_close(BoundedBeta(c0, c1).mode, -mode)


def test_actor_beta_mode_from_raw_outputs_is_exact_where_concentrations_round_to_one():
    # In float32 1 + softplus(-17) is exactly 1; the mode s1 / (s1 + s0) on [0, 1] is still
    # well defined and interior. Reference: float64 softplus.
    raw1 = torch.tensor([-17.0, -20.0, -30.0, -16.5, 3.0, -100.0, -1e4, 50.0, 0.0])
    raw0 = torch.tensor([-16.0, -25.0, -17.0, -16.7, -40.0, -101.0, -1e4 - 2.0, 60.0, 1e4])
    dist = BoundedBeta.from_raw(raw1, raw0)
    assert bool((dist.concentration1[:3] == 1.0).all())  # the rounding the raw values avoid
    expected = []
    with mpmath.workdps(50):
        for r1, r0 in zip(raw1.tolist(), raw0.tolist(), strict=True):
            s1, s0 = mpmath.log1p(mpmath.exp(r1)), mpmath.log1p(mpmath.exp(r0))
            expected.append(float(2 * s1 / (s1 + s0) - 1))
    np.testing.assert_allclose(dist.mode.numpy(), expected, atol=1e-6, rtol=0)


def test_log_softplus_matches_float64_and_the_numpy_twin():
    from robot_sac.cpu_inference import log_softplus as log_softplus_np
    from robot_sac.distributions import log_softplus

    x = np.concatenate(
        [
            -np.logspace(-8, 38, 400),
            np.logspace(-8, 38, 400),
            # around -16.6 (1 + softplus rounds to 1) and -87.3 .. -103.9 (exp(x) is subnormal)
            np.array([0.0, -16.6, -87.0, -87.5, -88.8, -95.0, -100.0, -103.0, -104.0, -150.0]),
        ]
    ).astype(np.float32)
    with mpmath.workdps(50):
        ref = np.array([float(mpmath.log(mpmath.log1p(mpmath.exp(float(v))))) for v in x])
    ours = log_softplus(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-6)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(log_softplus_np(x), ours, rtol=1e-6, atol=1e-6)
        special = np.array([-np.inf, np.inf, np.nan], np.float32)
        np.testing.assert_array_equal(log_softplus_np(special), [-np.inf, np.inf, np.nan])
    torch.testing.assert_close(
        log_softplus(torch.from_numpy(special)),
        torch.tensor([-np.inf, np.inf, np.nan]),
        equal_nan=True,
    )
