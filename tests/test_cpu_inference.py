"""The numpy serving path: the torch actor's actions and distribution, inside the envelope."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_sac.networks import Actor
from robot_sac.policy import load_policy, policy_bytes

LOW, HIGH = [-2.0, 0.0, -0.5], [2.0, 1.0, 0.5]


def make_policy(family: str, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    actor = Actor(7, 3, hidden=(32, 32), family=family)  # type: ignore[arg-type]
    with torch.no_grad():  # spread the outputs so saturation and both tails are exercised
        actor.net[-1].weight.mul_(4.0)
    return load_policy(policy_bytes(actor, LOW, HIGH, version=1))


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_deterministic_actions_equal_torch(family: str):
    pi = make_policy(family)
    obs = np.random.default_rng(0).standard_normal((64, 7)).astype(np.float32) * 3
    fast, bad = pi.act_numpy(obs, deterministic=True)
    ref, ref_bad = pi.act_tensor(torch.from_numpy(obs), deterministic=True)
    np.testing.assert_allclose(fast, ref.numpy(), atol=2e-5)
    assert not bad.any() and not ref_bad.any()
    assert fast.dtype == np.float32 and fast.shape == (64, 3)


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_stochastic_actions_follow_the_torch_distribution(family: str):
    pi = make_policy(family)
    pi.seed(0)
    torch.manual_seed(0)
    obs = np.tile(np.random.default_rng(1).standard_normal((1, 7)).astype(np.float32), (100_000, 1))
    fast, _ = pi.act_numpy(obs)
    ref = pi.act_tensor(torch.from_numpy(obs))[0].numpy()
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(fast, q, axis=0), np.quantile(ref, q, axis=0), atol=0.03)
    np.testing.assert_allclose(fast.std(0), ref.std(0), atol=0.01)
    assert fast.std(0).min() > 0  # actually stochastic


def test_mixed_flags_pick_mode_or_sample_row_by_row():
    pi = make_policy("tanh_normal")
    obs = np.random.default_rng(2).standard_normal((6, 7)).astype(np.float32)
    flags = np.array([True, False, True, False, True, False])
    mode, _ = pi.act_numpy(obs, True)
    mixed, _ = pi.act_numpy(obs, flags)
    np.testing.assert_array_equal(mixed[flags], mode[flags])
    assert not np.allclose(mixed[~flags], mode[~flags])


def test_envelope_non_finite_rows_get_the_safe_action_and_bounds_hold():
    pi = make_policy("tanh_normal")
    pi.set_safe_action([0.5, 0.25, 0.0])
    obs = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32) * 1e30
    obs[2, 4] = np.nan
    for deterministic in (True, False):
        actions, bad = pi.act_numpy(obs, deterministic)
        assert bad.tolist() == [False, False, True, False, False]
        np.testing.assert_array_equal(actions[2], np.array([0.5, 0.25, 0.0], np.float32))
        assert np.isfinite(actions).all()
        assert (actions >= np.float32(LOW)).all() and (actions <= np.float32(HIGH)).all()
