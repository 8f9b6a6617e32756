"""Observation normalisation: the running statistics, the version file's format 2, every serving
path, the learner that accumulates and publishes the statistics, and its checkpoint.

References are independent: numpy's ``mean``/``var`` over all the data at once for the running
statistics, and ``clip((obs - mean) / std)`` computed in float64 for the normalisation.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.networks import Actor, overflow_free_obs_bound
from robot_sac.normalization import (
    DEFAULT_EPS,
    LiveNormalization,
    ObsNormalization,
    RunningMeanStd,
)
from robot_sac.policy import (
    FORMAT,
    FORMAT_NORMALIZED,
    Policy,
    PolicyFileError,
    load_policy,
    policy_bytes,
    save_policy,
    with_version,
)
from robot_sac.replay import Batch
from robot_sac.sac import SAC
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.services.learner import Learner
from robot_sac.services.learner.checkpoint import load_checkpoint, save_checkpoint
from robot_sac.settings import Settings
from robot_sac.store import Store, open_store
from robot_sac.train_local import train_local
from tests.servers import start_thread_service

OBS_DIM, ACTION_DIM = 5, 2
LOW, HIGH = [-2.0, 0.0], [2.0, 1.0]
F32_MAX = float(np.finfo(np.float32).max)
# Observations in mixed units: offsets and scales far apart, as a robot's sensors give them.
# A change made to a format-2 file's tensors and metadata, before it is saved again.
Change = Callable[[dict[str, torch.Tensor], dict[str, str]], None]
OFFSET = np.array([100.0, -5.0, 0.01, 3e3, 0.0])
SCALE = np.array([10.0, 0.1, 1e-3, 50.0, 1.0])


def reference_normalize(obs: np.ndarray, norm: ObsNormalization) -> np.ndarray:
    """The formula in float64, from the file's float32 mean and std, rounded once at the end."""
    mean, std = norm.mean.astype(np.float64), norm.std.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        x = (obs.astype(np.float64) - mean) / std
    return np.clip(x, -norm.clip, norm.clip).astype(np.float32)


def assert_normalised(actual: np.ndarray, obs: np.ndarray, norm: ObsNormalization) -> None:
    """``actual`` is the reference normalisation of ``obs`` to float32 rounding: float32 rounds
    twice (after the subtraction and after the division), the reference once, so they may differ
    in the last bit; NaN where the reference has NaN."""
    np.testing.assert_allclose(actual, reference_normalize(obs, norm), rtol=3e-7, atol=0)


def stats_for(obs: np.ndarray, clip: float = 10.0) -> ObsNormalization:
    rms = RunningMeanStd(obs.shape[1])
    rms.update(obs)
    return rms.frozen(clip=clip)


def sensor_obs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (OFFSET + SCALE * rng.standard_normal((n, OBS_DIM))).astype(np.float32)


def make_actor(family: str = "tanh_normal", seed: int = 0) -> Actor:
    torch.manual_seed(seed)
    actor = Actor(OBS_DIM, ACTION_DIM, hidden=(32, 32), family=family)  # type: ignore[arg-type]
    with torch.no_grad():  # spread the outputs so both tails of the action range are used
        actor.net[-1].weight.mul_(4.0)
    return actor


def normalized_policy(family: str = "tanh_normal", seed: int = 0) -> Policy:
    norm = stats_for(sensor_obs(1000, seed=seed + 100))
    return load_policy(policy_bytes(make_actor(family, seed), LOW, HIGH, 1, obs_norm=norm))


def plain_twin(pi: Policy) -> Policy:
    """The same actor in a format-1 file: it acts on whatever it is given, unnormalised."""
    return load_policy(policy_bytes(pi.actor, LOW, HIGH, version=1))


# --- the running statistics ---------------------------------------------------------------------


def test_running_stats_equal_numpy_over_uneven_batches() -> None:
    obs = sensor_obs(2000, seed=1)
    sizes = [1, 0, 7, 300, 2, 1, 689, 1000]  # sums to 2000; the first merge starts from nothing
    rms = RunningMeanStd(OBS_DIM)
    start = 0
    for size in sizes:
        rms.update(obs[start : start + size])
        start += size
    assert start == len(obs) and rms.count == len(obs)
    data = obs.astype(np.float64)
    np.testing.assert_allclose(rms.mean, data.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(rms.var, data.var(axis=0), rtol=1e-9, atol=0)
    # Merging is exact in exact arithmetic: one batch gives the same statistics.
    whole = RunningMeanStd(OBS_DIM)
    whole.update(obs)
    np.testing.assert_allclose(rms.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(rms.var, whole.var, rtol=1e-9)
    frozen = rms.frozen(clip=5.0, eps=DEFAULT_EPS)
    assert frozen.mean.dtype == frozen.std.dtype == np.float32
    np.testing.assert_array_equal(frozen.mean, data.mean(axis=0).astype(np.float32))
    np.testing.assert_allclose(frozen.std, np.sqrt(data.var(axis=0) + DEFAULT_EPS), rtol=1e-6)
    assert frozen.clip == 5.0 and frozen.count == 2000


def test_running_stats_before_data_are_the_identity_and_a_constant_input_has_std_sqrt_eps() -> None:
    empty = RunningMeanStd(3).frozen()
    np.testing.assert_array_equal(empty.mean, np.zeros(3, np.float32))
    np.testing.assert_array_equal(empty.std, np.ones(3, np.float32))
    rms = RunningMeanStd(2)
    rms.update(np.full((10, 2), 4.25, np.float32))
    rms.update(np.full((3, 2), 4.25, np.float32))
    frozen = rms.frozen(eps=1e-8)
    np.testing.assert_array_equal(frozen.mean, [4.25, 4.25])
    np.testing.assert_allclose(frozen.std, [1e-4, 1e-4], rtol=1e-6)
    # Without eps the std would be 0: it is floored at float32's smallest normal number, and the
    # constant input normalises to 0, any other value to the clip.
    tiny = np.finfo(np.float32).tiny
    without_eps = rms.frozen(clip=10.0, eps=0.0)
    np.testing.assert_array_equal(without_eps.std, [tiny, tiny])
    np.testing.assert_array_equal(without_eps(np.array([[4.25, 4.5]], np.float32)), [[0.0, 10.0]])


def test_statistics_near_float32_limits_keep_a_finite_std() -> None:
    rms = RunningMeanStd(1)
    rms.update(np.array([[-F32_MAX], [F32_MAX]], np.float32))  # std 3.4e38: inf in float32
    frozen = rms.frozen()
    assert frozen.std[0] == np.float32(F32_MAX) and frozen.mean[0] == 0.0


def test_running_stats_state_dict_round_trips_and_refuses_another_size() -> None:
    rms = RunningMeanStd(OBS_DIM)
    rms.update(sensor_obs(50, seed=2))
    again = RunningMeanStd(OBS_DIM)
    again.load_state_dict(rms.state_dict())
    assert again.count == 50
    np.testing.assert_array_equal(again.mean, rms.mean)
    np.testing.assert_array_equal(again.m2, rms.m2)
    with pytest.raises(ValueError, match="do not fit"):
        RunningMeanStd(OBS_DIM + 1).load_state_dict(rms.state_dict())


# --- the formula, in numpy and torch ------------------------------------------------------------


def test_numpy_and_torch_normalise_bit_for_bit_and_as_the_float64_reference() -> None:
    rng = np.random.default_rng(3)
    norm = ObsNormalization(
        mean=np.array([100.0, -5.0, 0.01, -1e38, 0.0]),
        std=np.array([10.0, 0.1, 1e-3, 2.0, 1e-30]),
        clip=7.5,
    )
    obs = sensor_obs(500, seed=4)
    obs[:20] *= 1e4  # far beyond the clip
    obs[20, :] = F32_MAX  # obs - mean overflows in float32 for the -1e38 mean: +inf, then +clip
    obs[21, :] = -F32_MAX
    obs[22, 1], obs[23, 2], obs[24, 3] = np.inf, -np.inf, np.nan
    obs[25:40] = rng.uniform(-1, 1, (15, OBS_DIM)).astype(np.float32)
    with_numpy = norm(obs)
    with_torch = norm(torch.from_numpy(obs)).numpy()
    assert with_numpy.dtype == with_torch.dtype == np.float32
    np.testing.assert_array_equal(with_numpy, with_torch)  # NaN positions must agree too
    assert_normalised(with_numpy, obs, norm)
    assert np.nanmax(np.abs(with_numpy)) == 7.5
    assert with_numpy[20, 3] == 7.5 and with_numpy[21, 3] == -7.5
    assert with_numpy[22, 1] == 7.5 and with_numpy[23, 2] == -7.5 and np.isnan(with_numpy[24, 3])
    assert np.isnan(with_numpy).sum() == 1


def test_the_normalisation_refuses_bad_statistics() -> None:
    ok = {"mean": np.zeros(2), "std": np.ones(2)}
    for bad, what in (
        ({"std": np.array([1.0, 0.0])}, "above 0"),
        ({"std": np.array([1.0, -1.0])}, "above 0"),
        ({"mean": np.array([np.nan, 0.0])}, "finite"),
        ({"std": np.ones(3)}, "one length"),
        ({"clip": 0.0}, "clip"),
        ({"clip": float("inf")}, "clip"),
        ({"eps": -1.0}, "eps"),
    ):
        with pytest.raises(ValueError, match=what):
            ObsNormalization(**{**ok, **bad})


# --- the version file ---------------------------------------------------------------------------


def header_of(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def test_the_statistics_ship_in_a_format_2_file_and_load_back(tmp_path: Path) -> None:
    norm = stats_for(sensor_obs(300, seed=5), clip=6.0)
    actor = make_actor()
    data = policy_bytes(actor, LOW, HIGH, version=4, updates=9, obs_norm=norm)
    header = header_of(data)
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT_NORMALIZED == "robot_sac.policy/2"
    assert float(meta["obs_norm_clip"]) == 6.0 and int(meta["obs_norm_count"]) == 300
    assert header["obs_norm.mean"]["dtype"] == header["obs_norm.std"]["dtype"] == "F32"
    assert header["obs_norm.mean"]["shape"] == [OBS_DIM]
    for source in (data, tmp_path / "v4.safetensors"):
        if isinstance(source, Path):
            save_policy(source, actor, LOW, HIGH, 4, 9, obs_norm=norm)
        pi = load_policy(source)
        assert pi.obs_norm is not None and pi.info.normalization is not None
        np.testing.assert_array_equal(pi.obs_norm.mean, norm.mean)
        np.testing.assert_array_equal(pi.obs_norm.std, norm.std)
        assert pi.obs_norm.clip == 6.0 and pi.obs_norm.count == 300
        assert pi.obs_norm.eps == norm.eps
        assert pi.obs_bound == F32_MAX and pi.input_bound == overflow_free_obs_bound(pi.actor)
    # The registry renumbers an upload: the normalisation stays, bit for bit.
    renumbered = with_version(data, 17)
    again = load_policy(renumbered)
    assert again.version == 17 and again.info.normalization == pi.info.normalization
    assert again.obs_norm is not None
    np.testing.assert_array_equal(again.obs_norm.mean, norm.mean)
    np.testing.assert_array_equal(again.obs_norm.std, norm.std)
    loaded = safetensors.torch.load(renumbered)
    assert torch.equal(loaded["obs_norm.std"], torch.tensor(norm.std))


def test_format_1_files_are_still_written_without_normalisation_and_still_load() -> None:
    actor = make_actor()
    data = policy_bytes(actor, LOW, HIGH, version=2)
    header = header_of(data)
    assert header["__metadata__"]["format"] == FORMAT == "robot_sac.policy/1"
    assert not any(k.startswith("obs_norm") for k in header)
    assert not any(k.startswith("obs_norm") for k in header["__metadata__"])
    # A file as the code before format 2 wrote it, its metadata spelled out by hand.
    tensors = {k: v.detach().contiguous() for k, v in actor.state_dict().items()}
    legacy = safetensors.torch.save(
        tensors,
        metadata={
            "format": "robot_sac.policy/1",
            "family": "tanh_normal",
            "obs_dim": str(OBS_DIM),
            "action_dim": str(ACTION_DIM),
            "action_low": json.dumps(LOW),
            "action_high": json.dumps(HIGH),
            "hidden": "[32, 32]",
            "log_std_min": "-5.0",
            "log_std_max": "2.0",
            "version": "3",
            "created_at": "2024-01-01T00:00:00+00:00",
            "updates": "10",
        },
    )
    for pi in (load_policy(data), load_policy(legacy)):
        assert pi.obs_norm is None and pi.info.normalization is None
        assert pi.obs_bound == pi.input_bound == overflow_free_obs_bound(pi.actor)
        # it acts on the raw observation: the actor's mode, mapped onto the bounds
        obs = sensor_obs(4, seed=6)
        mode = torch.tanh(actor.net(torch.from_numpy(obs)).chunk(2, -1)[0]).detach().numpy()
        expected = np.float32(LOW) + (mode + 1) * (np.float32(HIGH) - np.float32(LOW)) / 2
        np.testing.assert_allclose(pi.act(obs, deterministic=True), expected, atol=1e-6)
    assert load_policy(with_version(legacy, 8)).info.normalization is None


def retampered(data: bytes, change: Change) -> bytes:
    tensors = safetensors.torch.load(data)
    meta = dict(header_of(data)["__metadata__"])
    change(tensors, meta)
    return safetensors.torch.save(tensors, metadata=meta)


def _set(name: str, value: torch.Tensor) -> Change:
    def change(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        tensors[name] = value

    return change


def _meta(key: str, value: str | None) -> Change:
    def change(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if value is None:
            del meta[key]
        else:
            meta[key] = value

    return change


def _drop(name: str) -> Change:
    def change(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        del tensors[name]

    return change


def _ones(fill: float = 1.0, n: int = OBS_DIM, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((n,), fill, dtype=dtype)


TAMPERED = {
    "zero std": (_set("obs_norm.std", torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])), "obs_norm"),
    "negative std": (_set("obs_norm.std", _ones(-2.0)), "obs_norm"),
    "NaN mean": (_set("obs_norm.mean", torch.tensor([0.0, np.nan, 0, 0, 0])), "finite"),
    "inf std": (_set("obs_norm.std", _ones(np.inf)), "finite"),
    "short mean": (_set("obs_norm.mean", _ones(0.0, OBS_DIM - 1)), "shapes"),
    "float64 std": (_set("obs_norm.std", _ones(dtype=torch.float64)), "dtype"),
    "no std": (_drop("obs_norm.std"), "tensors"),
    "format 1 with stats": (_meta("format", "robot_sac.policy/1"), "tensors"),
    "no clip": (_meta("obs_norm_clip", None), "metadata"),
    "zero clip": (_meta("obs_norm_clip", "0.0"), "obs_norm"),
    "NaN clip": (_meta("obs_norm_clip", "nan"), "obs_norm"),
    "clip beyond float32": (_meta("obs_norm_clip", "1e39"), "obs_norm"),
    "negative eps": (_meta("obs_norm_eps", "-1e-8"), "obs_norm"),
    "unparseable count": (_meta("obs_norm_count", "many"), "metadata"),
    "format 3": (_meta("format", "robot_sac.policy/3"), "metadata"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_normalisation_is_refused_with_a_named_check(case: str) -> None:
    change, check = TAMPERED[case]
    data = policy_bytes(make_actor(), LOW, HIGH, 1, obs_norm=stats_for(sensor_obs(50, seed=7)))
    load_policy(data)  # the untampered file is fine
    bad = retampered(data, change)
    with pytest.raises(PolicyFileError) as refused:
        load_policy(bad)
    assert refused.value.check == check, str(refused.value)


def test_a_normalisation_for_another_size_is_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="normalisation is for 4"):
        policy_bytes(make_actor(), LOW, HIGH, 1, obs_norm=stats_for(np.zeros((3, 4), np.float32)))


# --- every serving path -------------------------------------------------------------------------


def edge_rows(norm: ObsNormalization) -> tuple[np.ndarray, list[bool]]:
    """Observations around every bound, and whether each must be answered the safe action."""
    mean, std, clip = norm.mean, norm.std, np.float32(norm.clip)
    rows = [sensor_obs(1, seed=8)[0]]
    for factor in (1 - 1e-6, 1.0, 1 + 1e-6, 1e3):  # just inside, at and beyond the clip
        rows.append(mean + np.float32(factor) * clip * std)
        rows.append(mean - np.float32(factor) * clip * std)
    rows += [np.full(OBS_DIM, F32_MAX), np.full(OBS_DIM, -F32_MAX), np.full(OBS_DIM, 1e30)]
    refused = [False] * len(rows)
    for value in (np.inf, -np.inf, np.nan):  # not finite: refused before the network
        row = mean.copy()
        row[2] = value
        rows.append(row)
        refused.append(True)
    return np.asarray(rows, np.float32), refused


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_numpy_torch_and_act_agree_on_normalised_policies_near_and_beyond_the_bounds(
    family: str,
) -> None:
    pi = normalized_policy(family)
    assert pi.obs_norm is not None
    obs, refused = edge_rows(pi.obs_norm)
    fast, fast_bad = pi.act_numpy(obs, deterministic=True)
    ref, ref_bad = pi.act_tensor(torch.from_numpy(obs), deterministic=True)
    assert fast_bad.tolist() == ref_bad.tolist() == refused
    np.testing.assert_allclose(fast, ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(fast[fast_bad], np.tile(pi.safe_action, (sum(refused), 1)))
    via_act = pi.act(obs, deterministic=True)
    np.testing.assert_array_equal(via_act, ref.numpy())
    for i, row in enumerate(obs):  # one row at a time too (the service's usual batch)
        one, one_bad = pi.act_numpy(row[None], deterministic=True)
        assert one_bad[0] == refused[i]
        np.testing.assert_allclose(one[0], fast[i], atol=1e-5, rtol=0)
    # The normalisation is really applied: the same actor given the reference-normalised input
    # answers the same, and given the raw input does not.
    plain = plain_twin(pi)
    ok = ~np.asarray(refused)
    expected = plain.act(reference_normalize(obs[ok], pi.obs_norm), deterministic=True)
    np.testing.assert_allclose(fast[ok], expected, atol=1e-5, rtol=0)
    raw, _ = plain.act_numpy(obs[:1], deterministic=True)
    assert np.abs(raw - fast[:1]).max() > 1e-3


def test_the_network_bound_still_guards_a_normalised_input_on_both_paths() -> None:
    # A network so steep that even inputs inside the clip could overflow float32: its last layer
    # scaled by a quarter of its bound puts the overflow-free input bound near 4 (the bound is
    # about 2**120 over the product of the layers' norms), inside clip = 10.
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, ACTION_DIM, hidden=(16, 16))
    with torch.no_grad():
        actor.net[-1].weight.mul_(overflow_free_obs_bound(actor) / 4)
    bound = overflow_free_obs_bound(actor)
    assert 0.5 < bound < 10.0, bound
    norm = ObsNormalization(mean=np.zeros(OBS_DIM), std=np.ones(OBS_DIM), clip=10.0)
    pi = load_policy(policy_bytes(actor, LOW, HIGH, 1, obs_norm=norm))
    assert pi.input_bound == bound and pi.obs_bound == F32_MAX
    b = np.float32(bound)
    obs = np.zeros((5, OBS_DIM), np.float32)
    obs[0, 0] = b  # at the bound: evaluated
    obs[1, 1] = -b
    obs[2, 2] = np.nextafter(b, np.float32(np.inf))  # beyond it: the safe action
    obs[3, 3] = 1e30  # normalised to the clip, which is beyond it
    obs[4, 4] = 0.5 * b
    for actions, replaced in (
        pi.act_numpy(obs, True),
        tuple(t.numpy() for t in pi.act_tensor(torch.from_numpy(obs), True)),
    ):
        assert replaced.tolist() == [False, False, True, True, False]
        np.testing.assert_array_equal(actions[2:4], np.tile(pi.safe_action, (2, 1)))
        assert np.isfinite(actions).all()


# --- the learner, the service and the checkpoint ------------------------------------------------

TASK = TaskSpec(
    name="sensors",
    obs_dim=OBS_DIM,
    action_low=tuple(LOW),
    action_high=tuple(HIGH),
    sac=SACConfig(
        hidden=(32, 32), batch_size=32, learning_starts=200, utd=1.0, obs_normalization=True
    ),
)


def sensor_transitions(start: int, n: int) -> list[Transition]:
    obs = sensor_obs(n + 1, seed=start)
    rng = np.random.default_rng(start + 1)
    return [
        Transition(
            robot_id="r1",
            episode_id=f"e{k // 100}",
            step=k % 100,
            obs=obs[i].tolist(),
            action=[float(rng.uniform(-2, 2)), float(rng.uniform(0, 1))],
            reward=float(obs[i, 0] / 100.0),
            next_obs=obs[i + 1].tolist(),
            terminated=False,
            truncated=k % 100 == 99,
            policy_version=0,
        )
        for i, k in enumerate(range(start, start + n))
    ]


def logged_obs(store: Store) -> np.ndarray:
    return store.read_after(0, 100_000).obs.astype(np.float64)


def learner_for(data: Path, store: Store, spec: TaskSpec = TASK) -> Learner:
    settings = Settings(data_dir=data, publish_every=100, checkpoint_every=10_000)
    learner = Learner(settings, spec, store, torch.device("cpu"), tensorboard=False)
    learner.start()
    return learner


def assert_stats_of(norm: ObsNormalization, obs: np.ndarray, eps: float = DEFAULT_EPS) -> None:
    assert norm.count == len(obs)
    np.testing.assert_allclose(norm.mean, obs.mean(axis=0).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(norm.std, np.sqrt(obs.var(axis=0) + eps), rtol=1e-5)


def test_the_learner_publishes_the_statistics_it_accumulated_and_the_service_serves_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    store = open_store(TASK, data)
    try:
        ensure_initial_policy(store)
        v0 = load_policy(store.policy_bytes(store.get_policy(0)))  # type: ignore[arg-type]
        assert v0.obs_norm is not None and v0.obs_norm.count == 0  # mean 0, std 1, clipped
        store.append(sensor_transitions(0, 250))
        learner = learner_for(data, store)
        store.append(sensor_transitions(250, 250))
        learner.run(lambda: False, max_updates=300)
        logged = logged_obs(store)
        assert len(logged) == 500 and learner.counters.consumed == 500
        published = [r for r in store.list_policies() if r.version > 0]
        assert len(published) >= 3
        for record in published:
            pi = load_policy(store.policy_bytes(record), sha256=record.sha256)
            assert pi.info.normalization is not None and pi.obs_norm is not None
            # each version carries the statistics of the rows consumed when it was published
            consumed = learner.counters.env_steps_at_version[record.version]
            assert pi.obs_norm.count == consumed
            assert_stats_of(pi.obs_norm, logged[:consumed])
        learner.close()

        # The service serves the newest version, normalising on its numpy path (one row) and
        # on its torch path (a batch above the numpy path's 16 rows) alike.
        newest = store.latest_policy()
        assert newest is not None
        pi = load_policy(store.policy_bytes(newest), sha256=newest.sha256)
        assert pi.obs_norm is not None
        obs = sensor_obs(20, seed=99)
        obs[3, 0] = 1e5  # far beyond the clip
        expected = plain_twin(pi).act(reference_normalize(obs, pi.obs_norm), deterministic=True)
        service = start_thread_service(data, TASK)
        try:
            c = service.client()
            batch = c.post("/v1/act/batch", json={"obs": obs.tolist(), "deterministic": True})
            assert batch.status_code == 200, batch.text
            assert batch.json()["policy_version"] == newest.version
            np.testing.assert_allclose(batch.json()["actions"], expected, atol=1e-5, rtol=0)
            for i in (0, 3, 7):
                one = c.post("/v1/act", json={"obs": obs[i].tolist(), "deterministic": True})
                assert one.status_code == 200 and one.json()["hold"] is False, one.text
                np.testing.assert_allclose(one.json()["action"], expected[i], atol=1e-5, rtol=0)
        finally:
            service.stop()
    finally:
        store.close()


def test_the_learner_trains_on_batches_normalised_with_its_current_statistics(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    store = open_store(TASK, data)
    try:
        ensure_initial_policy(store)
        store.append(sensor_transitions(0, 300))
        learner = learner_for(data, store)
        norm = learner.frozen_norm()
        assert norm is not None
        assert_stats_of(norm, logged_obs(store))
        state = copy.deepcopy(learner.sac.state_dict())

        def replica() -> SAC:
            sac = SAC(OBS_DIM, ACTION_DIM, TASK.sac)
            sac.load_state_dict(copy.deepcopy(state))
            return sac

        reference, raw = replica(), replica()  # built first: building draws random weights
        torch.manual_seed(11)
        learner._update()
        # The same draw of rows and noise, normalised by the float64 reference, then one update.
        torch.manual_seed(11)
        batch = learner.replay.sample(TASK.sac.batch_size)
        normalised = batch._replace(
            obs=torch.from_numpy(reference_normalize(batch.obs.numpy(), norm)),
            next_obs=torch.from_numpy(reference_normalize(batch.next_obs.numpy(), norm)),
        )
        reference.update(normalised)
        torch.manual_seed(11)
        raw.update(learner.replay.sample(TASK.sac.batch_size))
        params = list(learner.sac.actor.parameters()) + list(learner.sac.critic.parameters())
        ref_params = list(reference.actor.parameters()) + list(reference.critic.parameters())
        raw_params = list(raw.actor.parameters()) + list(raw.critic.parameters())
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
        assert any(
            not torch.allclose(p, q, atol=1e-4) for p, q in zip(params, raw_params, strict=True)
        )
    finally:
        store.close()


def test_the_checkpoint_keeps_the_statistics_and_an_older_one_still_loads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = open_store(TASK, data)
    try:
        ensure_initial_policy(store)
        store.append(sensor_transitions(0, 300))
        learner = learner_for(data, store)
        learner.run(lambda: False, max_updates=20)
        learner.close()
        saved = load_checkpoint(data / "learner" / "checkpoint.pt")  # weights_only=True
        assert saved is not None and saved["obs_norm"]["count"] == 300
        assert saved["obs_norm"]["mean"].dtype == torch.float64
        np.testing.assert_allclose(
            saved["obs_norm"]["mean"].numpy(), logged_obs(store).mean(axis=0), rtol=1e-12
        )

        # Restarted: the statistics come back from the checkpoint, and the replay rebuilt from
        # the log does not count its rows twice; new rows are merged in.
        restarted = learner_for(data, store)
        assert restarted.obs_rms is not None and restarted.obs_rms.count == 300
        np.testing.assert_array_equal(restarted.obs_rms.mean, saved["obs_norm"]["mean"].numpy())
        np.testing.assert_array_equal(restarted.obs_rms.m2, saved["obs_norm"]["m2"].numpy())
        store.append(sensor_transitions(300, 150))
        restarted.run(lambda: False, max_updates=restarted.sac.updates + 10)
        norm = restarted.frozen_norm()
        assert norm is not None
        assert_stats_of(norm, logged_obs(store))
        restarted.close()

        # A checkpoint written without the statistics (older, or normalisation off) loads: the
        # statistics are computed from the rows the rebuild puts into the replay buffer.
        path = data / "learner" / "checkpoint.pt"
        old = load_checkpoint(path)
        assert old is not None
        del old["obs_norm"]
        save_checkpoint(path, old)
        older = learner_for(data, store)
        assert older.sac.updates == restarted.sac.updates  # the rest of the checkpoint resumed
        norm = older.frozen_norm()
        assert norm is not None and len(older.replay) == 450
        assert_stats_of(norm, logged_obs(store))
        older.close(publish=False)
    finally:
        store.close()


def test_without_normalisation_nothing_changes(tmp_path: Path) -> None:
    spec = TASK.model_copy(update={"sac": TASK.sac.model_copy(update={"obs_normalization": False})})
    data = tmp_path / "data"
    store = open_store(spec, data)
    try:
        ensure_initial_policy(store)
        store.append(sensor_transitions(0, 260))
        learner = learner_for(data, store, spec)
        assert learner.obs_rms is None and learner.frozen_norm() is None
        learner.run(lambda: False, max_updates=60)
        learner.close()
        for record in store.list_policies():
            data_ = store.policy_bytes(record)
            assert header_of(data_)["__metadata__"]["format"] == FORMAT
            assert load_policy(data_).obs_norm is None
        saved = load_checkpoint(data / "learner" / "checkpoint.pt")
        assert saved is not None and "obs_norm" not in saved
    finally:
        store.close()


def test_live_statistics_are_updated_in_place() -> None:
    # What a captured CUDA graph relies on: the tensors the batch transform reads stay the same
    # objects while their values follow the statistics.
    live = LiveNormalization(OBS_DIM, "cpu", clip=10.0)
    mean, std = live.mean, live.std
    obs = torch.from_numpy(sensor_obs(8, seed=12))
    batch = Batch(obs, torch.zeros(8, ACTION_DIM), torch.zeros(8), obs * 2, torch.zeros(8))
    np.testing.assert_array_equal(live.batch(batch).obs.numpy(), np.clip(obs.numpy(), -10, 10))
    norm = stats_for(sensor_obs(100, seed=13))
    live.set(norm)
    assert live.mean is mean and live.std is std
    out = live.batch(batch)
    assert_normalised(out.obs.numpy(), obs.numpy(), norm)
    assert_normalised(out.next_obs.numpy(), 2 * obs.numpy(), norm)
    assert out.action is batch.action and out.reward is batch.reward


def test_train_local_refuses_normalisation_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="obs_normalization"):
        train_local(object(), TASK, total_steps=10, progress=False)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_graph_normalises_with_the_statistics_of_each_replay() -> None:
    from robot_sac.cuda_graphs import GraphedUpdate
    from robot_sac.replay import ReplayBuffer

    torch.manual_seed(0)
    sac = SAC(OBS_DIM, ACTION_DIM, TASK.sac, "cuda")
    replay = ReplayBuffer(4096, OBS_DIM, ACTION_DIM, "cuda")
    obs = torch.from_numpy(sensor_obs(513, seed=14))
    replay.add(obs[:-1], torch.zeros(512, ACTION_DIM), torch.zeros(512), obs[1:], torch.zeros(512))
    live = LiveNormalization(OBS_DIM, "cuda", clip=10.0)
    seen: dict[str, torch.Tensor] = {}

    def transform(batch: Batch) -> Batch:
        out = live.batch(batch)
        seen["obs"] = out.obs  # a static tensor of the graph: overwritten by each replay
        return out

    step = GraphedUpdate(sac, replay, transform=transform)
    # Captured with the statistics before any data; each replay must use those set since.
    for seed in (15, 16):
        stats = stats_for(sensor_obs(64, seed=seed) * np.float32(seed - 14))
        live.set(stats)
        step()
        torch.cuda.synchronize()
        rows = replay.storage[step.last_indices, :OBS_DIM].cpu().numpy()
        assert_normalised(seen["obs"].cpu().numpy(), rows, stats)
