"""The ring buffer: bulk fill, wrap-around, sampling; the screen of rows fit to learn from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_sac.replay import DEFAULT_OBS_BOUND, DEFAULT_REWARD_BOUND, ReplayBuffer, sane_rows


def rows(start: int, n: int, obs_dim: int = 3, action_dim: int = 2):
    idx = np.arange(start, start + n, dtype=np.float32)
    return {
        "obs": np.repeat(idx[:, None], obs_dim, 1),
        "action": np.repeat(idx[:, None], action_dim, 1) / 1000.0,
        "reward": idx,
        "next_obs": np.repeat(idx[:, None] + 0.5, obs_dim, 1),
        "terminated": (idx % 2).astype(np.float32),
    }


def test_bulk_add_and_all_in_order():
    rb = ReplayBuffer(10, 3, 2)
    rb.add(**rows(0, 4))
    batch = rb.all()
    assert len(rb) == 4
    np.testing.assert_array_equal(batch.reward.numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(batch.next_obs[:, 0].numpy(), [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(batch.terminated.numpy(), [0, 1, 0, 1])
    np.testing.assert_allclose(batch.action[:, 1].numpy(), [0, 0.001, 0.002, 0.003])


def test_wrap_around_keeps_the_newest():
    rb = ReplayBuffer(5, 3, 2)
    rb.add(**rows(0, 3))
    rb.add(**rows(3, 4))  # crosses the end of the ring
    assert len(rb) == 5
    np.testing.assert_array_equal(rb.all().reward.numpy(), [2, 3, 4, 5, 6])
    rb.add(**rows(100, 12))  # more than the capacity at once
    np.testing.assert_array_equal(rb.all().reward.numpy(), [107, 108, 109, 110, 111])


def test_single_transition_add():
    rb = ReplayBuffer(4, 3, 1)
    rb.add(np.ones(3), np.array([0.5]), 2.0, np.zeros(3), 1.0)
    b = rb.all()
    assert b.obs.shape == (1, 3) and b.action.shape == (1, 1) and b.reward.shape == (1,)
    assert float(b.reward[0]) == 2.0 and float(b.terminated[0]) == 1.0


def test_sample_draws_only_stored_rows_with_the_right_shapes():
    rb = ReplayBuffer(1000, 3, 2)
    rb.add(**rows(0, 50))
    torch.manual_seed(0)
    b = rb.sample(4096)
    assert b.obs.shape == (4096, 3) and b.action.shape == (4096, 2)
    assert b.reward.shape == (4096,) and b.terminated.shape == (4096,)
    r = b.reward.numpy()
    assert r.min() >= 0 and r.max() <= 49
    assert len(np.unique(r)) == 50  # uniform over what is stored: every row shows up
    np.testing.assert_array_equal(b.obs[:, 0].numpy(), r)  # fields stay aligned row by row
    np.testing.assert_array_equal(b.next_obs[:, 2].numpy(), r + 0.5)


def test_bad_shapes_and_empty_sampling_are_refused():
    rb = ReplayBuffer(10, 3, 2)
    with pytest.raises(ValueError, match="empty"):
        rb.sample(1)
    with pytest.raises(ValueError, match="obs must have 3 columns"):
        rb.add(np.zeros((2, 4)), np.zeros((2, 2)), np.zeros(2), np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="rows"):
        rb.add(np.zeros((2, 3)), np.zeros((3, 2)), np.zeros(2), np.zeros((2, 3)), np.zeros(2))


def test_sane_rows_refuses_values_beyond_the_bounds_and_non_finite_ones():
    r = rows(0, 8)
    r["obs"][1, 2] = 3.4e38  # a glitching sensor: finite float32
    r["next_obs"][2, 0] = -2e6
    r["reward"][3] = 3.4e38
    r["reward"][4] = np.nan
    r["action"][5, 1] = np.inf
    r["obs"][6, 0] = DEFAULT_OBS_BOUND  # at the bound: kept
    r["reward"][7] = -10 * DEFAULT_REWARD_BOUND
    mask = sane_rows(r["obs"], r["action"], r["reward"], r["next_obs"])
    assert mask.tolist() == [True, False, False, False, False, False, True, False]
    # a task's own bounds replace the defaults, tighter or looser
    own = sane_rows(r["obs"], r["action"], r["reward"], r["next_obs"], 100.0, 1e9)
    assert own.tolist() == [True, False, False, False, False, False, False, True]
    assert DEFAULT_OBS_BOUND**2 * 1e6 < 1e30 and DEFAULT_REWARD_BOUND**2 * 1e6 < 1e30
