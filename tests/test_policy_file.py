"""Policy version files: round trip, bounds, and every refusal with a clear message."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import robot_sac.policy as policy_module
from robot_sac.networks import Actor
from robot_sac.policy import (
    PolicyFileError,
    expected_tensor_shapes,
    load_policy,
    policy_bytes,
    read_policy_info,
    save_policy,
)
from robot_sac.schemas import TaskSpec

LOW, HIGH = [-2.0, 0.0, -0.5], [2.0, 1.0, 0.5]


@pytest.fixture
def actor() -> Actor:
    torch.manual_seed(0)
    return Actor(6, 3, hidden=(32, 32))


@pytest.fixture
def saved(tmp_path: Path, actor: Actor) -> tuple[Path, str]:
    path = tmp_path / "policies" / "v3.safetensors"
    digest = save_policy(path, actor, LOW, HIGH, version=3, updates=1234)
    return path, digest


def test_round_trip_gives_identical_actions(saved, actor: Actor):
    path, digest = saved
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    pi = load_policy(path, sha256=digest)
    assert (pi.version, pi.info.updates, pi.obs_dim, pi.action_dim) == (3, 1234, 6, 3)
    assert pi.info.family == "tanh_normal" and pi.info.hidden == (32, 32)
    obs = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    with torch.no_grad():
        unit = torch.tanh(actor(torch.from_numpy(obs))[0]).numpy()
    expected = np.asarray(LOW) + (unit + 1) / 2 * (np.asarray(HIGH) - np.asarray(LOW))
    np.testing.assert_allclose(pi.act(obs, deterministic=True), expected, atol=1e-6)
    # stochastic actions: same seed, same actions, from the original file and a fresh load
    again = load_policy(path.read_bytes())
    torch.manual_seed(5)
    a = pi.act(obs)
    torch.manual_seed(5)
    b = again.act(obs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, pi.act(obs, deterministic=True))


def test_act_accepts_single_batch_numpy_torch_and_lists(saved):
    pi = load_policy(saved[0])
    single = pi.act(np.zeros(6, np.float32), deterministic=True)
    assert isinstance(single, np.ndarray) and single.shape == (3,) and single.dtype == np.float32
    batch = pi.act(torch.zeros(4, 6), deterministic=True)
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 3)
    np.testing.assert_allclose(batch[0].numpy(), single)
    np.testing.assert_allclose(pi.act([0.0] * 6, deterministic=True), single)
    with pytest.raises(ValueError, match="obs_dim 6"):
        pi.act(np.zeros(5))


def test_actions_are_finite_and_inside_bounds_for_any_input(saved):
    pi = load_policy(saved[0])
    rng = np.random.default_rng(1)
    obs = np.concatenate([rng.standard_normal((200, 6)) * 1e6, np.full((1, 6), 3e38)]).astype(
        np.float32
    )
    for deterministic in (True, False):
        a = pi.act(obs, deterministic=deterministic)
        assert np.isfinite(a).all()
        assert (a >= np.asarray(LOW, np.float32)).all() and (
            a <= np.asarray(HIGH, np.float32)
        ).all()


def test_non_finite_output_answers_the_safe_action_and_is_counted(saved):
    pi = load_policy(saved[0], safe_action=[0.5, 0.25, 0.0])
    obs = np.zeros((3, 6), np.float32)
    obs[1, 2] = np.nan
    a = pi.act(obs, deterministic=True)
    np.testing.assert_array_equal(a[1], np.array([0.5, 0.25, 0.0], np.float32))
    assert np.isfinite(a).all() and pi.replaced == 1
    default = load_policy(saved[0])  # default safe action: zeros clipped into the bounds
    np.testing.assert_array_equal(default.act(obs[1], deterministic=True), [0.0, 0.0, 0.0])


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path: Path, actor: Actor):
    path = tmp_path / "v1.safetensors"
    first = save_policy(path, actor, LOW, HIGH, version=1)
    with torch.no_grad():
        actor.net[0].bias.add_(1.0)
    second = save_policy(path, actor, LOW, HIGH, version=1)
    assert first != second and load_policy(path).sha256 == second
    assert [p.name for p in tmp_path.iterdir()] == ["v1.safetensors"]


def refused(data: bytes, check: str, match: str, **kw) -> None:
    with pytest.raises(PolicyFileError, match=match) as info:
        load_policy(data, **kw)
    assert info.value.check == check


def test_wrong_sha256_is_refused(saved):
    path, digest = saved
    refused(path.read_bytes(), "sha256", "expected 0+, the file hashes to", sha256="0" * 64)
    load_policy(path, sha256=digest.upper())  # hex case does not matter


def test_truncated_and_garbage_files_are_refused(saved):
    data = saved[0].read_bytes()
    refused(data[: len(data) // 2], "format", "corrupt")
    refused(data[:5], "format", "too short")
    refused(b"\xff" * 64, "format", "not a safetensors file")
    broken = data[:8] + b"#" + data[9:]
    refused(broken, "format", "header is not JSON")


def test_a_pickle_is_refused_without_being_unpickled(tmp_path: Path, actor: Actor):
    buf = io.BytesIO()
    torch.save(actor.state_dict(), buf)
    refused(buf.getvalue(), "format", "not a safetensors file")


def test_nan_weight_is_refused(actor: Actor):
    with torch.no_grad():
        actor.net[2].weight[3, 4] = float("nan")
    refused(policy_bytes(actor, LOW, HIGH, version=1), "finite", r"net\.2\.weight holds NaN")


def rewrite(data: bytes, tensors: dict[str, torch.Tensor] | None = None, **meta_changes) -> bytes:
    header_len = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    meta.update({k: v for k, v in meta_changes.items() if v is not None})
    for k in [k for k, v in meta_changes.items() if v is None]:
        del meta[k]
    if tensors is None:
        tensors = safetensors.torch.load(data)
    return safetensors.torch.save(tensors, metadata=meta)


def test_wrong_shape_and_wrong_names_are_refused(actor: Actor):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    tensors = safetensors.torch.load(data)
    tensors["net.2.weight"] = torch.zeros(16, 32)
    refused(
        rewrite(data, tensors),
        "shapes",
        r"net\.2\.weight has shape \[16, 32\], expected \[32, 32\]",
    )
    # metadata that promises other sizes than the tensors have
    refused(rewrite(data, hidden="[64, 64]"), "shapes", "expected")
    tensors = safetensors.torch.load(data)
    tensors["extra"] = torch.zeros(1)
    refused(rewrite(data, tensors), "tensors", "unexpected \\['extra'\\]")
    tensors = safetensors.torch.load(data)
    tensors["net.0.bias"] = tensors["net.0.bias"].double()
    refused(rewrite(data, tensors), "dtype", "float64")


def test_incomplete_or_inconsistent_metadata_is_refused(actor: Actor):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    refused(rewrite(data, action_low=None), "metadata", "missing fields: action_low")
    refused(rewrite(data, family="gaussian"), "metadata", "unknown policy family")
    refused(rewrite(data, action_high="[2.0, 1.0]"), "metadata", "action_dim entries")
    refused(rewrite(data, action_high="[2.0, -1.0, 0.5]"), "metadata", "action bound 1")
    refused(rewrite(data, obs_dim="six"), "metadata", "does not parse")
    refused(rewrite(data, format="other/1"), "metadata", "format")
    plain = safetensors.torch.save(safetensors.torch.load(data))
    refused(plain, "metadata", "no metadata")


def test_beta_family_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    actor = Actor(4, 2, hidden=(16,), family="beta")
    path = tmp_path / "v9.safetensors"
    save_policy(path, actor, [-1, -3], [1, 3], version=9)
    info = read_policy_info(path.read_bytes())
    assert info.family == "beta" and info.version == 9
    pi = load_policy(path)
    a = pi.act(np.zeros((10, 4), np.float32))
    assert a.shape == (10, 2) and (np.abs(a[:, 1]) <= 3).all()


# --- a file is checked against the task and its own header before anything is built ---------


@pytest.fixture
def nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if load_policy builds an actor or loads tensor data."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_policy allocated before refusing the file")

    monkeypatch.setattr(policy_module, "Actor", forbidden)
    monkeypatch.setattr(policy_module, "load_safetensors", forbidden)


def test_huge_hidden_sizes_in_metadata_are_refused_before_any_allocation(
    actor: Actor, nothing_is_built: None
):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        refused(rewrite(data, hidden="[100000, 100000]"), "metadata", "each must be from 1 to 4096")
        refused(rewrite(data, hidden=json.dumps([8] * 9)), "metadata", "from 1 to 8 are accepted")
        refused(rewrite(data, obs_dim="1000000"), "metadata", "the limit is 65536")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert (
        peak < 2_000_000
    )  # bytes: the file and its parsed header, nothing in proportion to 10**10


def lying_file(meta: dict[str, str], declared: dict[str, list[int]], payload: bytes) -> bytes:
    """A safetensors file whose header declares ``declared`` shapes over ``payload`` bytes."""
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, shape in declared.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


def test_a_header_declaring_more_data_than_the_file_holds_is_refused_unloaded(
    actor: Actor, nothing_is_built: None
):
    meta = read_policy_info(policy_bytes(actor, LOW, HIGH, version=1)).metadata()
    meta["hidden"] = "[4096, 4096]"  # within the limits, and the shapes match the metadata
    shapes = expected_tensor_shapes(read_policy_info(lying_file(meta, {}, b"")))
    data = lying_file(meta, {k: list(v) for k, v in shapes.items()}, b"\0" * 64)
    start = time.perf_counter()
    refused(data, "format", r"corrupt: net\.0\.weight declares bytes \[0, 98304\]")
    assert time.perf_counter() - start < 0.5


def test_header_shapes_names_and_dtypes_are_checked_before_loading(
    actor: Actor, nothing_is_built: None
):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    refused(rewrite(data, hidden="[64, 64]"), "shapes", r"net\.0\.weight has shape \[32, 6\]")
    tensors = safetensors.torch.load(data)
    tensors["net.4.bias"] = tensors["net.4.bias"].half()
    refused(rewrite(data, tensors), "dtype", r"net\.4\.bias is float16, expected float32")
    del tensors["net.4.bias"]
    refused(rewrite(data, tensors), "tensors", r"missing \['net\.4\.bias'\]")


def test_expected_tensor_shapes_match_the_actor_built_from_the_metadata(actor: Actor):
    info = read_policy_info(policy_bytes(actor, LOW, HIGH, version=1))
    built = {k: tuple(v.shape) for k, v in actor.state_dict().items()}
    assert expected_tensor_shapes(info) == built
    deep = Actor(5, 2, hidden=(7, 3, 11), family="beta")
    info = read_policy_info(policy_bytes(deep, [-1, -1], [1, 1], version=1))
    assert expected_tensor_shapes(info) == {k: tuple(v.shape) for k, v in deep.state_dict().items()}


def test_a_file_for_another_task_is_refused_before_anything_is_built(
    actor: Actor, monkeypatch: pytest.MonkeyPatch
):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    same = TaskSpec(obs_dim=6, action_low=tuple(LOW), action_high=tuple(HIGH))
    assert load_policy(data, spec=same).obs_dim == 6
    monkeypatch.setattr(policy_module, "Actor", lambda *a, **k: pytest.fail("built an actor"))
    monkeypatch.setattr(policy_module, "_check_header", lambda *a: pytest.fail("read the header"))
    other_dims = TaskSpec(obs_dim=7, action_low=tuple(LOW), action_high=tuple(HIGH))
    refused(data, "task", "obs_dim 6, action_dim 3; the task has 7, 3", spec=other_dims)
    other_bounds = TaskSpec(obs_dim=6, action_low=(-1.0, 0.0, -0.5), action_high=tuple(HIGH))
    refused(data, "task", "action_low", spec=other_bounds)


def test_bounds_that_are_not_a_float32_range_are_refused(actor: Actor):
    data = policy_bytes(actor, LOW, HIGH, version=1)
    refused(rewrite(data, action_high="[1e39, 1.0, 0.5]"), "metadata", "not a range in float32")
    refused(
        rewrite(data, action_low="[1.0, 0.0, -0.5]", action_high="[1.00000001, 1.0, 0.5]"),
        "metadata",
        "not a range in float32",
    )
