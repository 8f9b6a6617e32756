"""The batched twin critic equals n separate MLPs; the actor's parameters stay in range."""

from __future__ import annotations

import torch

from robot_sac.distributions import BoundedBeta, TanhNormal
from robot_sac.networks import Actor, TwinCritic


def test_twin_critic_batched_pass_equals_each_q_alone():
    torch.manual_seed(0)
    critic = TwinCritic(5, 2, hidden=(32, 16), n=2)
    x = torch.randn(64, 7)
    q = critic(x)
    assert q.shape == (2, 64)
    for i in range(2):
        torch.testing.assert_close(q[i], critic.q(i, x))
    # The two Q-functions are independent networks, not copies.
    assert not torch.allclose(q[0], q[1])


def test_twin_critic_with_explicit_params_matches_and_detaches():
    torch.manual_seed(0)
    critic = TwinCritic(3, 1, hidden=(8,))
    x = torch.randn(10, 4, requires_grad=True)
    frozen = [p.detach() for p in critic.parameters()]
    q = critic(x, frozen)
    torch.testing.assert_close(q, critic(x))
    q.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in critic.parameters())


def test_twin_critic_initialisation_matches_nn_linear_bounds():
    critic = TwinCritic(10, 6, hidden=(64, 64))
    for w, b in zip(critic.weights, critic.biases, strict=True):
        w, b = w.detach(), b.detach()
        bound = 1 / w.shape[1] ** 0.5
        assert float(w.abs().max()) <= bound and float(b.abs().max()) <= bound
        assert float(w.std()) > 0.4 * bound  # uniform on [-bound, bound] has std bound/sqrt(3)


def test_actor_families_give_valid_distributions():
    torch.manual_seed(0)
    obs = torch.randn(128, 4) * 100  # extreme inputs must still give valid parameters
    normal = Actor(4, 3, hidden=(16,), family="tanh_normal", log_std_min=-5, log_std_max=2)
    with torch.no_grad():
        dist = normal.dist(obs)
    assert isinstance(dist, TanhNormal)
    log_std = dist.scale.log()
    assert float(log_std.min()) >= -5 - 1e-5 and float(log_std.max()) <= 2 + 1e-5
    beta = Actor(4, 3, hidden=(16,), family="beta")
    bdist = beta.dist(obs)
    assert isinstance(bdist, BoundedBeta)
    assert float(bdist.concentration1.min()) >= 1.0 and float(bdist.concentration0.min()) >= 1.0
