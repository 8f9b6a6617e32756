"""The numpy serving path: the torch actor's actions and distribution, inside the envelope."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_sac.networks import Actor, overflow_free_obs_bound
from robot_sac.policy import Policy, load_policy, policy_bytes
from tests.servers import CHEETAH, start_thread_service

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


# --- both serving paths answer the same deterministic action, whatever the network outputs -----

OBS_DIM, ACTION_DIM = 5, 3


def saturating_policy(family: str, seed: int, out_scale: float, bias: float) -> Policy:
    """A small actor whose last layer is scaled (and shifted) so its raw outputs saturate."""
    torch.manual_seed(seed)
    actor = Actor(OBS_DIM, ACTION_DIM, hidden=(16, 16), family=family)  # type: ignore[arg-type]
    with torch.no_grad():
        actor.net[-1].weight.mul_(out_scale)
        actor.net[-1].bias.mul_(out_scale).add_(bias)
    return load_policy(policy_bytes(actor, LOW, HIGH, version=1))


def assert_paths_agree(pi: Policy, obs: np.ndarray) -> None:
    fast, fast_bad = pi.act_numpy(obs, deterministic=True)
    ref, ref_bad = pi.act_tensor(torch.from_numpy(obs), deterministic=True)
    ref_np = ref.numpy()
    for actions in (fast, ref_np):
        assert np.isfinite(actions).all()
        assert (actions >= np.float32(LOW)).all() and (actions <= np.float32(HIGH)).all()
    np.testing.assert_array_equal(fast_bad, ref_bad.numpy())
    # numpy and torch sum a matrix product in different orders: with weights scaled by 1e4 the
    # pre-tanh value differs by ~1e-7 relative, a few 1e-5 in the action (seen: 1.5e-5). A wrong
    # formula is off by far more.
    np.testing.assert_allclose(fast, ref_np, atol=2e-4, rtol=0)


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)  # up to +-3.4e38
moderate32 = st.floats(-10.0, 10.0, width=32)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["tanh_normal", "beta"]),
    seed=st.integers(0, 2**16),
    # 1: ordinary outputs; 100 and 1e4: beyond float32's exp range; 1e30: near overflow
    out_scale=st.sampled_from([1.0, 4.0, 100.0, 1e4, 1e6, 1e30]),
    bias=st.sampled_from([0.0, -20.0, 20.0, -1e4, 1e4]),
    obs=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.just(OBS_DIM)),
        elements=st.one_of(moderate32, finite32),
    ),
)
def test_deterministic_numpy_and_torch_agree_for_any_weights_and_observations(
    family: str, seed: int, out_scale: float, bias: float, obs: np.ndarray
) -> None:
    pi = saturating_policy(family, seed, out_scale, bias)
    assert_paths_agree(pi, obs)


def beta_policy_with_raw_outputs(raw1: list[float], raw0: list[float]) -> Policy:
    """A Beta actor whose raw outputs are these constants for every observation."""
    actor = Actor(OBS_DIM, len(raw1), hidden=(8,), family="beta")
    with torch.no_grad():
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.copy_(torch.tensor(raw1 + raw0))
    dim = len(raw1)
    return load_policy(policy_bytes(actor, [-1.0] * dim, [1.0] * dim, version=1))


def beta_mode_reference(raw1: list[float], raw0: list[float]) -> np.ndarray:
    """The Beta mode in [-1, 1] in float64: concentrations 1 + s, mode on [0, 1] is s1/(s1+s0)."""
    s1 = np.log1p(np.exp(np.asarray(raw1, np.float64)))
    s0 = np.log1p(np.exp(np.asarray(raw0, np.float64)))
    return 2.0 * s1 / (s1 + s0) - 1.0


# In float32, 1 + softplus(x) rounds to exactly 1 once x is below about -16.6.
EDGE_RAW1 = [-16.5, -16.7, -17.0, -20.0, -20.0, -30.0, 3.0, -16.63]
EDGE_RAW0 = [-16.7, -16.5, 5.0, -25.0, -20.0, -17.0, -40.0, -16.64]


def test_beta_mode_at_the_float32_edge_of_the_concentrations():
    pi = beta_policy_with_raw_outputs(EDGE_RAW1, EDGE_RAW0)
    obs = np.random.default_rng(4).standard_normal((3, OBS_DIM)).astype(np.float32)
    fast, fast_bad = pi.act_numpy(obs, deterministic=True)
    ref, ref_bad = pi.act_tensor(torch.from_numpy(obs), deterministic=True)
    assert not fast_bad.any() and not ref_bad.any()
    expected = np.tile(beta_mode_reference(EDGE_RAW1, EDGE_RAW0), (3, 1))
    np.testing.assert_allclose(fast, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ref.numpy(), expected, atol=1e-6, rtol=0)


def test_service_answers_one_deterministic_beta_action_whatever_the_batch_size(tmp_path: Path):
    raw1, raw0 = [-20.0, -17.0, -30.0, 2.0, -16.7, -50.0], [-25.0, 4.0, -17.0, -40.0, -16.6, -50.0]
    torch.manual_seed(0)
    actor = Actor(CHEETAH.obs_dim, CHEETAH.action_dim, hidden=(16, 16), family="beta")
    with torch.no_grad():  # the last layer alone decides the raw outputs: saturated, constant
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.copy_(torch.tensor(raw1 + raw0))
    expected = beta_mode_reference(raw1, raw0).tolist()
    body = policy_bytes(actor, CHEETAH.action_low, CHEETAH.action_high, version=5)
    svc = start_thread_service(tmp_path / "data")
    try:
        c = svc.client()
        r = c.post(
            "/v1/admin/policies",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        deadline = time.monotonic() + 10
        while c.get("/v1/policy").json()["version"] != version:
            assert time.monotonic() < deadline, "the uploaded version is not served"
            time.sleep(0.02)
        obs = [0.3] * CHEETAH.obs_dim
        one = c.post(
            "/v1/act",
            content=json.dumps({"obs": obs, "deterministic": True}),
            headers={"Content-Type": "application/json"},
        )
        many = c.post(
            "/v1/act/batch",
            content=json.dumps({"obs": [obs] * 32, "deterministic": True}),
            headers={"Content-Type": "application/json"},
        )
        assert one.status_code == 200 and many.status_code == 200, (one.text, many.text)
        assert one.json()["policy_version"] == many.json()["policy_version"] == version
        assert one.json()["action"] == pytest.approx(expected, abs=1e-6)
        for row in many.json()["actions"]:
            assert row == pytest.approx(one.json()["action"], abs=1e-6)
    finally:
        svc.stop()


def test_obs_bound_keeps_every_float32_sum_finite_and_both_paths_refuse_beyond_it():
    pi = saturating_policy("tanh_normal", seed=3, out_scale=1e30, bias=0.0)
    bound = pi.obs_bound
    assert bound == overflow_free_obs_bound(pi.actor) and 0 < bound < 1e10
    assert np.float32(bound) == bound  # compared with float32 observations exactly
    # Sound: at max |obs| = bound, no intermediate value (in float64, so nothing overflows while
    # checking) exceeds 2**120, for any signs of the observation.
    signs = np.random.default_rng(5).choice([-1.0, 1.0], size=(256, OBS_DIM))
    x = signs * bound
    linears = [m for m in pi.actor.net if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(linears):
        x = x @ m.weight.detach().double().numpy().T + m.bias.detach().double().numpy()
        assert np.abs(x).max() <= 2.0**120
        if i < len(linears) - 1:
            x = np.maximum(x, 0.0)
    # Rows beyond it are answered the safe action on both paths, and counted; rows within kept.
    obs = np.zeros((3, OBS_DIM), np.float32)
    obs[0, 1] = bound
    obs[1, 2] = np.nextafter(np.float32(bound), np.float32(np.inf))
    obs[2, 0] = -3e38
    for actions, replaced in (
        pi.act_numpy(obs, True),
        tuple(t.numpy() for t in pi.act_tensor(torch.from_numpy(obs), True)),
    ):
        assert replaced.tolist() == [False, True, True]
        np.testing.assert_array_equal(actions[1:], np.tile(pi.safe_action, (2, 1)))
