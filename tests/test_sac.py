"""Invariants of the SAC update: which loss moves which parameters, the Polyak step, the target,
and the gradient guard that skips a step rather than take a non-finite one."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from robot_sac.config import SACConfig
from robot_sac.replay import Batch
from robot_sac.sac import SAC, all_finite, soft_td_target, soft_update


def make_batch(n: int = 64, obs_dim: int = 5, action_dim: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(n, obs_dim, generator=g),
        action=torch.rand(n, action_dim, generator=g) * 2 - 1,
        reward=torch.randn(n, generator=g),
        next_obs=torch.randn(n, obs_dim, generator=g),
        terminated=(torch.rand(n, generator=g) < 0.3).float(),
    )


@pytest.fixture(params=["tanh_normal", "beta"])
def sac(request) -> SAC:
    torch.manual_seed(0)
    return SAC(5, 2, SACConfig(hidden=(32, 32), policy_family=request.param))


def touched(loss: torch.Tensor, params: list[torch.Tensor]) -> list[bool]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


def test_each_loss_reaches_only_its_own_parameters(sac: SAC):
    out = sac.losses(make_batch())
    actor = list(sac.actor.parameters())
    critic = list(sac.critic.parameters())
    target = list(sac.critic_target.parameters())
    groups = {"actor": actor, "critic": critic, "log_alpha": [sac.log_alpha]}
    owner = {"loss_actor": "actor", "loss_qvalue": "critic", "loss_alpha": "log_alpha"}
    assert not any(p.requires_grad for p in target)
    for loss_name, own in owner.items():
        for group_name, params in groups.items():
            hits = touched(out[loss_name], params)
            if group_name == own:
                assert all(hits), f"{loss_name} leaves some {group_name} parameters untouched"
            else:
                assert not any(hits), f"{loss_name} reaches {group_name}"


def test_update_moves_every_trained_parameter_and_polyak_averages_the_target(sac: SAC):
    tau = sac.cfg.tau
    before = {
        "actor": [p.detach().clone() for p in sac.actor.parameters()],
        "critic": [p.detach().clone() for p in sac.critic.parameters()],
        "target": [p.detach().clone() for p in sac.critic_target.parameters()],
        "log_alpha": sac.log_alpha.detach().clone(),
    }
    out = sac.update(make_batch())
    assert set(out) >= {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy", "q_mean"}
    assert all(not v.requires_grad for v in out.values())
    for old, new in zip(before["actor"], sac.actor.parameters(), strict=True):
        assert not torch.equal(old, new)
    for old, new in zip(before["critic"], sac.critic.parameters(), strict=True):
        assert not torch.equal(old, new)
    assert not torch.equal(before["log_alpha"], sac.log_alpha.detach())
    for old_t, new_c, new_t in zip(
        before["target"], sac.critic.parameters(), sac.critic_target.parameters(), strict=True
    ):
        expected = old_t.double() + tau * (new_c.detach().double() - old_t.double())
        torch.testing.assert_close(new_t.double(), expected, atol=1e-7, rtol=0)
    assert sac.updates == 1


def test_the_actor_steps_against_the_critic_after_its_step():
    # Two learners alike but for the critic's learning rate. Were all losses taken before any
    # step, the actors would come out identical; stepping the critic first, they differ, and
    # with a zero critic learning rate the critic must be exactly as before.
    def one_update(critic_lr: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        sac = SAC(5, 2, SACConfig(hidden=(16, 16)))
        for group in sac.critic_optimizer.param_groups:
            group["lr"] = critic_lr
        critic_before = [p.detach().clone() for p in sac.critic.parameters()]
        torch.manual_seed(1)
        sac.update(make_batch())
        if critic_lr == 0.0:
            for old, new in zip(critic_before, sac.critic.parameters(), strict=True):
                assert torch.equal(old, new)
        return [p.detach().clone() for p in sac.actor.parameters()], critic_before

    frozen_critic, _ = one_update(0.0)
    moving_critic, _ = one_update(1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(frozen_critic, moving_critic, strict=True))


def test_soft_update_is_exact_for_a_known_tau():
    # Dyadic values and tau = 1/4: every intermediate is exact in float32.
    target = [torch.tensor([0.0, 1.0, -2.0, 8.0]), torch.tensor([[4.0, -4.0]])]
    source = [torch.tensor([4.0, 1.0, 2.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    soft_update(target, source, 0.25)
    assert torch.equal(target[0], torch.tensor([1.0, 1.0, -1.0, 6.0]))
    assert torch.equal(target[1], torch.tensor([[3.0, -2.0]]))
    soft_update(target, source, 1.0)
    assert torch.equal(target[0], source[0]) and torch.equal(target[1], source[1])


def test_td_target_terminated_is_reward_alone_truncated_bootstraps():
    reward = torch.tensor([1.0, 1.0])
    terminated = torch.tensor([1.0, 0.0])  # the second is, say, a time-limit truncation
    next_q, next_logp = torch.tensor([10.0, 10.0]), torch.tensor([-2.0, -2.0])
    y = soft_td_target(reward, terminated, next_q, next_logp, gamma=0.9, alpha=0.5)
    assert torch.equal(y, torch.tensor([1.0, 1.0 + 0.9 * (10.0 + 0.5 * 2.0)]))


def test_critic_loss_ignores_the_future_of_terminated_transitions(sac: SAC):
    # Changing the target critic changes the critic loss through non-terminated rows only.
    batch = make_batch(n=32)
    term, live = (
        batch._replace(terminated=torch.ones(32)),
        batch._replace(terminated=torch.zeros(32)),
    )

    def critic_loss(b: Batch) -> float:
        torch.manual_seed(123)  # the same next actions each call
        return float(sac.losses(b)["loss_qvalue"])

    base_term, base_live = critic_loss(term), critic_loss(live)
    with torch.no_grad():
        sac.critic_target.biases[-1].add_(50.0)
    assert critic_loss(term) == pytest.approx(base_term, rel=1e-6)
    assert abs(critic_loss(live) - base_live) > 100.0


def test_target_entropy_defaults_to_minus_action_dim():
    assert SAC(3, 4).target_entropy == -4.0
    assert SAC(3, 4, SACConfig(target_entropy=-1.5)).target_entropy == -1.5


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    a = SAC(5, 2, SACConfig(hidden=(16, 16)))
    for seed in range(3):
        a.update(make_batch(seed=seed))
    b = SAC(5, 2, SACConfig(hidden=(16, 16)))
    b.load_state_dict(a.state_dict())
    torch.manual_seed(7)
    out_a = a.update(make_batch(seed=10))
    torch.manual_seed(7)
    out_b = b.update(make_batch(seed=10))
    for k in out_a:
        assert torch.equal(out_a[k], out_b[k]), k
    for p, q in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        assert torch.equal(p, q)
    assert b.updates == a.updates == 4


def trained_state(sac: SAC) -> list[torch.Tensor]:
    """Every trained parameter and every optimiser state tensor (step counts included)."""
    tensors = [*sac.actor.parameters(), *sac.critic.parameters(), sac.log_alpha]
    for opt in (sac.actor_optimizer, sac.critic_optimizer, sac.alpha_optimizer):
        tensors += [t for s in opt.state.values() for t in s.values()]
    return [t.detach().clone() for t in tensors]


@pytest.mark.parametrize("earlier_updates", [0, 2])  # torch's first step, then the cached one
@pytest.mark.parametrize("poison", ["reward 1e30", "nan obs"])
def test_the_guard_skips_a_poisoned_batch_and_the_next_batch_steps(
    sac: SAC, earlier_updates: int, poison: str
):
    for seed in range(earlier_updates):
        sac.update(make_batch(seed=seed))
    batch = make_batch(seed=10)
    if poison == "reward 1e30":  # finite float32, passes a loose screen: only the guard stops it
        bad = batch._replace(reward=batch.reward.index_fill(0, torch.tensor([3]), 1e30))
    else:
        bad = batch._replace(obs=batch.obs.index_fill(0, torch.tensor([3]), math.nan))
    before = trained_state(sac)
    sac.update(bad)
    after = trained_state(sac)
    if earlier_updates == 0:
        # the skipped first step creates Adam's state as it would be before any step
        n_params = len(before)
        assert all(float(t.abs().max()) == 0.0 for t in after[n_params:])
        after_params = after[:n_params]
    else:
        after_params = after
    assert len(after_params) == len(before)
    for old, new in zip(before, after_params, strict=True):
        assert torch.equal(old, new)
    # the target's Polyak step moves it towards the unchanged critic: finite
    assert all_finite(sac.critic_target.parameters())
    assert float(sac.skipped_updates) == 1.0 and float(sac.skipped_in_a_row) == 1.0
    sac.update(batch)
    assert sac.is_finite()
    moved = [not torch.equal(old, new) for old, new in zip(after, trained_state(sac), strict=True)]
    assert all(moved)
    assert float(sac.skipped_updates) == 1.0 and float(sac.skipped_in_a_row) == 0.0


def test_without_the_guard_the_same_batch_poisons_the_state():
    # The counterpart of the test above: what the guard prevents does happen without it.
    torch.manual_seed(0)
    sac = SAC(5, 2, SACConfig(hidden=(32, 32)), grad_guard=False)
    batch = make_batch()
    sac.update(batch._replace(obs=batch.obs.index_fill(0, torch.tensor([3]), math.nan)))
    assert not sac.is_finite()


def test_the_guard_leaves_ordinary_updates_bit_identical():
    def run(grad_guard: bool) -> SAC:
        torch.manual_seed(0)
        sac = SAC(5, 2, SACConfig(hidden=(32, 32)), grad_guard=grad_guard)
        torch.manual_seed(1)
        for seed in range(5):
            sac.update(make_batch(seed=seed))
        return sac

    guarded, plain = run(True), run(False)
    for a, b in zip(trained_state(guarded), trained_state(plain), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        guarded.critic_target.parameters(), plain.critic_target.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert float(guarded.skipped_updates) == 0.0


def test_is_finite_sees_the_actor_the_critics_and_the_optimiser_moments():
    torch.manual_seed(0)
    sac = SAC(5, 2, SACConfig(hidden=(16, 16)))
    sac.update(make_batch())
    assert sac.is_finite() and sac.is_finite(actor_only=True)
    for corrupt in ("critic", "target", "moment", "actor"):
        broken = copy.deepcopy(sac)
        with torch.no_grad():
            if corrupt == "critic":
                next(broken.critic.parameters()).view(-1)[0] = math.inf
            elif corrupt == "target":
                next(broken.critic_target.parameters()).view(-1)[0] = math.nan
            elif corrupt == "moment":
                next(iter(broken.critic_optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = (
                    math.inf
                )
            else:
                next(broken.actor.parameters()).view(-1)[0] = math.nan
        assert not broken.is_finite(), corrupt
        assert broken.is_finite(actor_only=True) == (corrupt != "actor"), corrupt
