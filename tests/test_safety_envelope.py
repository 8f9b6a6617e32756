"""The safety envelope: bounds, non-finite rows and holds, the same in numpy and torch."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_sac.networks import Actor
from robot_sac.policy import load_policy, policy_bytes
from robot_sac.safety import SafetyEnvelope
from robot_sac.schemas import TaskSpec

LOW, HIGH = [-2.0, 0.0, -0.5, 10.0], [2.0, 1.0, 0.5, 30.0]
SAFE = [0.5, 0.25, 0.0, 12.0]


def reference(unit: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Unit actions in [-1, 1] mapped onto [low, high] in float64."""
    return low + (unit.astype(np.float64) + 1.0) / 2.0 * (high - low)


@st.composite
def envelopes_and_units(draw: st.DrawFn) -> tuple[SafetyEnvelope, np.ndarray]:
    dim = draw(st.integers(1, 4))
    centre = draw(hnp.arrays(np.float64, dim, elements=st.floats(-1e6, 1e6)))
    # at least 1e-4 relative to the centre, so the bounds stay distinct in float32
    half = draw(hnp.arrays(np.float64, dim, elements=st.floats(1e-3, 1e6))) + 1e-4 * np.abs(centre)
    low, high = centre - half, centre + half
    where = draw(hnp.arrays(np.float64, dim, elements=st.floats(0.0, 1.0)))
    safe = np.clip(low + where * (high - low), low, high)
    any32 = st.floats(width=32)  # NaN, +-inf, huge and tiny included
    unit = draw(
        hnp.arrays(
            np.float32,
            st.tuples(st.integers(1, 6), st.just(dim)),
            elements=st.one_of(st.floats(-1.0, 1.0, width=32), any32),
        )
    )
    return SafetyEnvelope(low, high, safe), unit


@settings(max_examples=300, deadline=None)
@given(envelopes_and_units())
def test_every_row_is_finite_inside_the_bounds_and_numpy_equals_torch(case):
    env, unit = case
    actions, replaced = env.to_robot_numpy(unit.copy())
    assert actions.dtype == np.float32 and actions.shape == unit.shape
    assert replaced.dtype == bool and replaced.shape == (unit.shape[0],)
    assert np.isfinite(actions).all()
    assert (actions >= env.low).all() and (actions <= env.high).all()
    # a row with a non-finite value is replaced, whole, by the safe action
    assert replaced[~np.isfinite(unit).all(axis=1)].all()
    np.testing.assert_array_equal(actions[replaced], np.tile(env.safe_action, (replaced.sum(), 1)))
    # rows inside [-1, 1] are kept and mapped affinely (float32 rounding of low + ... * span)
    ok = (np.abs(unit) <= 1.0).all(axis=1)
    assert not replaced[ok].any()
    low, high = env.low.astype(np.float64), env.high.astype(np.float64)
    scale = np.maximum(np.abs(low), np.abs(high))  # float32 keeps ~6e-8 of it; allow a few ulp
    assert (np.abs(actions[ok] - reference(unit[ok], low, high)) <= 5e-7 * scale).all()
    # torch answers the same, up to the rounding of center + unit * half_range (torch may fuse it)
    t_actions, t_replaced = env.to_robot_tensor(torch.from_numpy(unit.copy()))
    np.testing.assert_array_equal(t_replaced.numpy(), replaced)
    assert (np.abs(t_actions.numpy() - actions) <= 2.5e-7 * scale).all()


def test_known_values_and_replacement():
    env = SafetyEnvelope(LOW, HIGH, SAFE)
    unit = np.array(
        [
            [-1.0, 1.0, 0.0, 0.5],
            [np.nan, 0.0, 0.0, 0.0],
            [0.0, np.inf, 0.0, 0.0],
            [3.0, -7.0, 1e30, -1e30],  # out of range but finite: clipped into the bounds
            [0.0, 0.0, 0.0, -np.inf],
            [0.0, 0.0, 0.0, -1e38],  # so far out that robot units overflow: not finite, replaced
        ],
        np.float32,
    )
    expected = np.array(
        [[-2.0, 1.0, 0.0, 25.0], SAFE, SAFE, [2.0, 0.0, 0.5, 10.0], SAFE, SAFE], np.float32
    )
    for actions, replaced in (
        env.to_robot_numpy(unit.copy()),
        tuple(t.numpy() for t in env.to_robot_tensor(torch.from_numpy(unit.copy()))),
    ):
        np.testing.assert_array_equal(actions, expected)
        assert replaced.tolist() == [False, True, True, False, True, True]


def test_bounds_near_float32_max_do_not_overflow():
    big = 3.0e38
    env = SafetyEnvelope([-big], [big])
    unit = np.array([[-1.0], [0.0], [1.0], [0.5]], np.float32)
    actions, replaced = env.to_robot_numpy(unit)
    assert not replaced.any() and np.isfinite(actions).all()
    np.testing.assert_allclose(actions[:, 0], [-big, 0.0, big, big / 2], rtol=1e-6)


def test_held_answers_the_safe_action_in_fresh_arrays():
    env = SafetyEnvelope(LOW, HIGH, SAFE)
    for rows in (0, 1, 5):
        held = env.held(rows)
        assert held.shape == (rows, 4) and held.dtype == np.float32
        np.testing.assert_array_equal(held, np.tile(np.float32(SAFE), (rows, 1)))
    first = env.held(2)
    first[0, 0] = 99.0  # the caller may write into its answer; the next hold is unaffected
    np.testing.assert_array_equal(env.held(1)[0], np.float32(SAFE))
    np.testing.assert_array_equal(env.safe_action, np.float32(SAFE))
    np.testing.assert_array_equal(env.safe_action_tensor().numpy(), np.float32(SAFE))


def test_default_safe_action_is_zero_clipped_into_the_bounds():
    env = SafetyEnvelope(LOW, HIGH)
    np.testing.assert_array_equal(env.safe_action, np.float32([0.0, 0.0, 0.0, 10.0]))
    np.testing.assert_array_equal(env.held(1)[0], env.safe_action)


def test_from_spec_takes_the_tasks_bounds_and_safe_action():
    spec = TaskSpec(obs_dim=3, action_low=tuple(LOW), action_high=tuple(HIGH), safe_action=SAFE)
    env = SafetyEnvelope.from_spec(spec)
    np.testing.assert_array_equal(env.low, np.float32(LOW))
    np.testing.assert_array_equal(env.high, np.float32(HIGH))
    np.testing.assert_array_equal(env.safe_action, np.float32(SAFE))
    assert env.action_dim == 4
    default = SafetyEnvelope.from_spec(TaskSpec(obs_dim=3, action_low=(1.0,), action_high=(2.0,)))
    np.testing.assert_array_equal(default.safe_action, np.float32([1.0]))


@pytest.mark.parametrize(
    ("low", "high", "safe", "match"),
    [
        (LOW, HIGH, [0.5, 0.25, 0.0], "4 entries"),
        (LOW, HIGH, [0.5, 1.5, 0.0, 12.0], "inside the action bounds"),
        (LOW, HIGH, [0.5, 0.25, 0.0, 9.0], "inside the action bounds"),
        (LOW, HIGH, [np.nan, 0.25, 0.0, 12.0], "finite"),
        (LOW, HIGH, [np.inf, 0.25, 0.0, 12.0], "finite"),
        ([0.0, 1.0], [1.0, 1.0], None, "below"),
        ([1.0], [1.0 + 1e-12], None, "below its action_high in float32"),
        ([-1e39], [1.0], None, "finite in float32"),
        ([0.0, 0.0], [1.0], None, "one length"),
    ],
)
def test_invalid_bounds_and_safe_actions_are_refused(low, high, safe, match):
    with pytest.raises(ValueError, match=match):
        SafetyEnvelope(low, high, safe)


def test_arrays_are_read_only():
    env = SafetyEnvelope(LOW, HIGH, SAFE)
    for array in (env.low, env.high, env.safe_action):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0.0


def test_policy_acts_through_its_envelope_and_set_safe_action_replaces_it():
    torch.manual_seed(0)
    actor = Actor(5, 4, hidden=(8,))
    pi = load_policy(policy_bytes(actor, LOW, HIGH, version=1))
    assert isinstance(pi.envelope, SafetyEnvelope)
    np.testing.assert_array_equal(pi.envelope.low, np.float32(LOW))
    np.testing.assert_array_equal(pi.envelope.high, np.float32(HIGH))
    before = pi.envelope
    pi.set_safe_action(SAFE)
    assert pi.envelope is not before
    np.testing.assert_array_equal(pi.envelope.safe_action, np.float32(SAFE))
    obs = np.zeros((2, 5), np.float32)
    obs[1, 0] = np.nan
    for actions, replaced in (
        pi.act_numpy(obs, True),
        tuple(t.numpy() for t in pi.act_tensor(torch.from_numpy(obs), True)),
    ):
        assert replaced.tolist() == [False, True]
        np.testing.assert_array_equal(actions[1], np.float32(SAFE))
    with pytest.raises(ValueError, match="inside the action bounds"):
        pi.set_safe_action([5.0, 0.0, 0.0, 12.0])
    np.testing.assert_array_equal(pi.envelope.safe_action, np.float32(SAFE))  # unchanged
