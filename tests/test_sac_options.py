"""The critic options (LayerNorm, an ensemble with a random-subset min) against independent
references, and the defaults against the twin-critic update as it was written before them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from robot_sac.config import SACConfig
from robot_sac.networks import TwinCritic
from robot_sac.policy import PolicyInfo, policy_bytes, read_policy_info
from robot_sac.replay import Batch
from robot_sac.sac import SAC, soft_update
from tests.test_sac import make_batch, touched, trained_state

OBS, ACT = 5, 2


def sequential_critic(critic: TwinCritic, index: int) -> nn.Sequential:
    """Critic ``index`` rebuilt from torch's own modules: Linear (-> LayerNorm) -> ReLU per hidden
    layer, then Linear, with the batched module's weights copied in."""
    layers: list[nn.Module] = []
    depth = len(critic.weights)
    for i in range(depth):
        w, b = critic.weights[i][index].detach(), critic.biases[i][index, 0].detach()
        linear = nn.Linear(w.shape[0], w.shape[1])
        linear.weight.data.copy_(w.T)
        linear.bias.data.copy_(b)
        layers.append(linear)
        if i < depth - 1:
            if critic.layer_norm:
                norm = nn.LayerNorm(w.shape[1])
                norm.weight.data.copy_(critic.norm_scales[i][index, 0].detach())
                norm.bias.data.copy_(critic.norm_shifts[i][index, 0].detach())
                layers.append(norm)
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --- LayerNorm ------------------------------------------------------------------------------------


def test_layer_norm_is_absent_by_default():
    critic = SAC(OBS, ACT, SACConfig(hidden=(16, 16))).critic
    assert not critic.layer_norm
    assert not any(isinstance(m, nn.LayerNorm) for m in sequential_critic(critic, 0))
    assert set(critic.state_dict()) == {
        f"{kind}.{i}" for kind in ("weights", "biases") for i in (0, 1, 2)
    }


def test_layer_norm_follows_each_hidden_layer_of_every_critic():
    torch.manual_seed(0)
    sac = SAC(OBS, ACT, SACConfig(hidden=(32, 16), critic_layer_norm=True, num_critics=3))
    critic = sac.critic
    with torch.no_grad():  # away from the identity initialisation, so scale and shift matter
        for p in [*critic.norm_scales, *critic.norm_shifts]:
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(64, OBS + ACT)
    q = critic(x)
    assert q.shape == (3, 64)
    for i in range(3):
        reference = sequential_critic(critic, i)
        assert sum(isinstance(m, nn.LayerNorm) for m in reference) == 2
        torch.testing.assert_close(q[i], reference(x).squeeze(-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q[i], critic.q(i, x), rtol=1e-5, atol=1e-5)
    # the target critic carries them too (a copy), and the optimiser trains them
    assert len(list(sac.critic_target.parameters())) == len(list(critic.parameters())) == 10
    optimised = {id(p) for g in sac.critic_optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in [*critic.norm_scales, *critic.norm_shifts])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_layer_norm_makes_each_hidden_layer_scale_invariant(layer_norm: bool):
    # LayerNorm right after a linear layer cancels a positive rescaling of its weights and bias;
    # without it the rescaling passes through the ReLU to Q.
    torch.manual_seed(0)
    critic = TwinCritic(OBS, ACT, hidden=(32, 32), layer_norm=layer_norm)
    x = torch.randn(64, OBS + ACT)
    before = critic(x).detach()
    for layer in range(2):
        with torch.no_grad():
            critic.weights[layer].mul_(7.0)
            critic.biases[layer].mul_(7.0)
        after = critic(x).detach()
        if layer_norm:
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
        else:
            assert (after - before).abs().max() > 0.1


# --- the ensemble and its random-subset target ----------------------------------------------------


def test_a_subset_larger_than_the_ensemble_is_refused():
    with pytest.raises(ValidationError, match="critic_subset"):
        SACConfig(num_critics=3, critic_subset=4)
    with pytest.raises(ValidationError):
        SACConfig(num_critics=0, critic_subset=0)
    SACConfig(num_critics=1, critic_subset=1)  # a single critic is fine


def test_subset_draws_are_distinct_and_uniform_over_pairs():
    sac = SAC(OBS, ACT, SACConfig(hidden=(8,), num_critics=10, critic_subset=2))
    torch.manual_seed(0)
    draws = 9_000
    counts = dict.fromkeys(itertools.combinations(range(10), 2), 0)
    for _ in range(draws):
        subset = sac.draw_subset()
        assert subset.dtype == torch.int64 and subset.shape == (2,)
        counts[tuple(sorted(int(i) for i in subset))] += 1  # a KeyError if an index repeats
    expected = draws / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 80.0  # 44 degrees of freedom: the 99.9th percentile is 78.7


def reference_critic_loss(sac: SAC, batch: Batch, subset: Sequence[int], seed: int) -> Tensor:
    """The ensemble's critic loss, critic by critic with plain MLPs: every critic regresses on
    r + gamma (1 - d) (min over ``subset`` of the target critics - alpha log pi)."""
    alpha = sac.log_alpha.detach().exp()
    torch.manual_seed(seed)  # the same next actions as the update drew
    next_action, next_logp = sac.actor.dist(batch.next_obs).rsample_and_log_prob()
    next_x = torch.cat([batch.next_obs, next_action], -1)
    next_q = torch.stack([sac.critic_target.q(i, next_x) for i in subset]).min(0).values
    y = batch.reward + sac.cfg.gamma * (1 - batch.terminated) * (next_q - alpha * next_logp)
    x = torch.cat([batch.obs, batch.action], -1)
    return sum(0.5 * F.mse_loss(sac.critic.q(i, x), y) for i in range(sac.cfg.num_critics))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_target_is_the_min_over_the_drawn_pair(layer_norm: bool):
    torch.manual_seed(0)
    cfg = SACConfig(hidden=(32, 32), num_critics=10, critic_subset=2, critic_layer_norm=layer_norm)
    sac = SAC(OBS, ACT, cfg)
    with torch.no_grad():  # target critics apart from the online ones, as after training
        for p in sac.critic_target.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = make_batch(n=128)
    alpha = sac.log_alpha.detach().exp()
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        loss = sac.critic_loss(batch, alpha)["loss_qvalue"]
        assert sac.last_subset is not None
        subset = [int(i) for i in sac.last_subset]
        assert len(set(subset)) == 2 and all(0 <= i < 10 for i in subset)
        seen.add(tuple(sorted(subset)))
        expected = reference_critic_loss(sac, batch, subset, seed)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        # the subset matters: the min over all ten critics is another target
        everything = reference_critic_loss(sac, batch, range(10), seed)
        assert abs(float(loss.detach()) - float(everything.detach())) > 1e-3
    assert len(seen) > 1  # a fresh pair each update


@pytest.mark.parametrize(
    ("num_critics", "critic_subset", "reduce"), [(10, 2, "mean"), (3, 3, "min")]
)
def test_the_actor_follows_the_mean_of_an_ensemble_and_the_min_of_all(
    num_critics: int, critic_subset: int, reduce: str
):
    torch.manual_seed(0)
    sac = SAC(
        OBS, ACT, SACConfig(hidden=(32,), num_critics=num_critics, critic_subset=critic_subset)
    )
    obs = make_batch().obs
    alpha = torch.tensor(0.3)
    torch.manual_seed(1)
    out = sac.actor_losses(obs, alpha)
    torch.manual_seed(1)
    action, logp = sac.actor.dist(obs).rsample_and_log_prob()
    x = torch.cat([obs, action], -1)
    qs = torch.stack([sac.critic.q(i, x) for i in range(num_critics)])
    q = qs.mean(0) if reduce == "mean" else qs.min(0).values
    torch.testing.assert_close(out["loss_actor"], (alpha * logp - q).mean(), rtol=1e-5, atol=1e-6)


OPTION_CONFIGS = {
    "layer_norm": SACConfig(hidden=(32, 32), critic_layer_norm=True),
    "redq": SACConfig(hidden=(32, 32), num_critics=10, critic_subset=2),
    "rlpd": SACConfig(hidden=(32, 32), num_critics=10, critic_subset=2, critic_layer_norm=True),
}


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_with_the_options_each_loss_reaches_only_its_own_parameters(name: str):
    torch.manual_seed(0)
    sac = SAC(OBS, ACT, OPTION_CONFIGS[name])
    out = sac.losses(make_batch())
    groups = {
        "actor": list(sac.actor.parameters()),
        "critic": list(sac.critic.parameters()),
        "log_alpha": [sac.log_alpha],
    }
    owner = {"loss_actor": "actor", "loss_qvalue": "critic", "loss_alpha": "log_alpha"}
    for loss_name, own in owner.items():
        for group_name, params in groups.items():
            hits = touched(out[loss_name], params)
            # every critic of the ensemble regresses on the target, not only the drawn pair
            assert all(hits) if group_name == own else not any(hits), (loss_name, group_name)


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_with_the_options_the_update_polyak_averages_every_target_critic(name: str):
    torch.manual_seed(0)
    sac = SAC(OBS, ACT, OPTION_CONFIGS[name])
    target_before = [p.detach().clone() for p in sac.critic_target.parameters()]
    sac.update(make_batch())
    for old, new_c, new_t in zip(
        target_before, sac.critic.parameters(), sac.critic_target.parameters(), strict=True
    ):
        expected = old.double() + sac.cfg.tau * (new_c.detach().double() - old.double())
        torch.testing.assert_close(new_t.double(), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_with_the_options_twenty_updates_per_batch_fit_fixed_targets(name: str):
    # The update-to-data ratio of REDQ and RLPD (20): repeated updates on one batch of terminal
    # transitions, whose targets are the rewards alone, take every step and lower the critics'
    # loss (a critic with a wrong gradient would raise it).
    torch.manual_seed(0)
    sac = SAC(OBS, ACT, OPTION_CONFIGS[name].model_copy(update={"lr": 1e-3}))
    batch = make_batch(n=128)._replace(terminated=torch.ones(128))
    losses = [float(sac.update(batch)["loss_qvalue"]) for _ in range(20)]
    assert sac.is_finite() and float(sac.skipped_updates) == 0.0
    assert all(b < a for a, b in itertools.pairwise(losses[::5]))


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_with_the_options_the_state_dict_resumes_identically(name: str):
    torch.manual_seed(0)
    a = SAC(OBS, ACT, OPTION_CONFIGS[name])
    for seed in range(3):
        a.update(make_batch(seed=seed))
    b = SAC(OBS, ACT, OPTION_CONFIGS[name])
    b.load_state_dict(a.state_dict())
    torch.manual_seed(7)
    a.update(make_batch(seed=10))
    torch.manual_seed(7)
    b.update(make_batch(seed=10))
    for x, y in zip(trained_state(a), trained_state(b), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_the_critic_options_leave_the_version_file_alone(name: str):
    # Only the actor ships: a learner with other critics writes the same file for the same actor
    # (the same tensors and metadata; safetensors orders its metadata keys arbitrarily).
    def version_file(cfg: SACConfig) -> tuple[PolicyInfo, dict[str, Tensor]]:
        torch.manual_seed(0)
        sac = SAC(OBS, ACT, cfg)
        data = policy_bytes(sac.actor, [-1.0] * ACT, [1.0] * ACT, 3, 10, created_at="t")
        return read_policy_info(data), safetensors.torch.load(data)

    info, tensors = version_file(OPTION_CONFIGS[name])
    default_info, default_tensors = version_file(SACConfig(hidden=(32, 32)))
    assert info == default_info
    assert tensors.keys() == default_tensors.keys()
    assert all(torch.equal(tensors[k], default_tensors[k]) for k in tensors)


# --- the defaults are the twin-critic update, bit for bit -----------------------------------------


def twin_q(params: Sequence[Tensor], obs_action: Tensor) -> Tensor:
    """The twin critics' batched pass as written before the options, ``(2, B)``."""
    layers = len(params) // 2
    x = obs_action.unsqueeze(0).expand(2, *obs_action.shape)
    for i in range(layers - 1):
        x = torch.relu_(torch.baddbmm(params[layers + i], x, params[i]))
    return torch.baddbmm(params[-1], x, params[layers - 1]).squeeze(-1)


def twin_sac_update(sac: SAC, batch: Batch) -> None:
    """SAC's update before the options (critic step, then actor and temperature against the new
    critic, then Polyak), on ``sac``'s networks and optimisers; guard off."""
    alpha = sac.log_alpha.detach().exp()
    with torch.no_grad():
        next_action, next_logp = sac.actor.dist(batch.next_obs).rsample_and_log_prob()
        target = list(sac.critic_target.parameters())
        next_q = twin_q(target, torch.cat([batch.next_obs, next_action], -1)).amin(0)
        y = batch.reward + sac.cfg.gamma * (1.0 - batch.terminated) * (next_q - alpha * next_logp)
    q = twin_q(list(sac.critic.parameters()), torch.cat([batch.obs, batch.action], -1))
    sac.critic_optimizer.zero_grad()
    (0.5 * (q - y).square().mean(1).sum()).backward()
    sac.critic_optimizer.step()

    action_pi, logp_pi = sac.actor.dist(batch.obs).rsample_and_log_prob()
    frozen = [p.detach() for p in sac.critic.parameters()]
    q_pi = twin_q(frozen, torch.cat([batch.obs, action_pi], -1)).amin(0)
    loss_actor = (alpha * logp_pi - q_pi).mean()
    loss_alpha = -(sac.log_alpha * (logp_pi.detach() + sac.target_entropy)).mean()
    sac.actor_optimizer.zero_grad()
    sac.alpha_optimizer.zero_grad()
    (loss_actor + loss_alpha).backward()
    sac.actor_optimizer.step()
    sac.alpha_optimizer.step()
    soft_update(sac.critic_target.parameters(), sac.critic.parameters(), sac.cfg.tau)


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
@pytest.mark.parametrize(
    "cfg",
    [SACConfig(hidden=(32, 32)), SACConfig(hidden=(32, 32), num_critics=2, critic_subset=2)],
    ids=["defaults", "explicit"],
)
def test_the_defaults_are_the_twin_critic_update_bit_for_bit(cfg: SACConfig, family: str):
    def run(update: str) -> tuple[SAC, Tensor]:
        torch.manual_seed(0)
        sac = SAC(OBS, ACT, cfg.model_copy(update={"policy_family": family}), grad_guard=False)
        torch.manual_seed(1)
        for seed in range(6):
            if update == "ours":
                sac.update(make_batch(seed=seed))
            else:
                twin_sac_update(sac, make_batch(seed=seed))
        return sac, torch.get_rng_state()

    ours, ours_rng = run("ours")
    reference, reference_rng = run("reference")
    assert torch.equal(ours_rng, reference_rng)  # no extra random draw (no subset to draw)
    assert ours.last_subset is None
    for a, b in zip(trained_state(ours), trained_state(reference), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        ours.critic_target.parameters(), reference.critic_target.parameters(), strict=True
    ):
        assert torch.equal(a, b)
