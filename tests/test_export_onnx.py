"""`robot-sac export-onnx`: the ONNX graph answers what `load_policy(...).act(obs, True)` answers.

Real version files and a real store; the command runs in a subprocess and onnxruntime runs what it
wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from robot_sac.networks import Actor
from robot_sac.normalization import ObsNormalization
from robot_sac.policy import load_policy, policy_bytes
from robot_sac.schemas import TaskSpec
from robot_sac.store import open_store

# Uneven bounds and a safe action that is not the centre: a wrong affine map or a wrong
# replacement shows.
SPEC = TaskSpec(
    name="onnx-task",
    obs_dim=9,
    action_low=(-1.0, -2.0, 0.0),
    action_high=(1.0, 3.0, 0.5),
    safe_action=(0.5, 0.0, 0.25),
)
ATOL = 1e-5


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_sac.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def normalization(seed: int) -> ObsNormalization:
    """Statistics far from the identity: means of several units, stds from 0.05 to 20."""
    rng = np.random.default_rng(seed)
    return ObsNormalization(
        mean=rng.normal(scale=3.0, size=SPEC.obs_dim).astype(np.float32),
        std=np.exp(rng.uniform(np.log(0.05), np.log(20.0), SPEC.obs_dim)).astype(np.float32),
        clip=5.0,
        count=1234,
    )


def version_file(
    family: str = "tanh_normal", obs_norm: ObsNormalization | None = None, seed: int = 0
) -> bytes:
    torch.manual_seed(seed)
    actor = Actor(SPEC.obs_dim, SPEC.action_dim, (32, 32), family)  # type: ignore[arg-type]
    with torch.no_grad():  # larger weights than the initialisation: actions reach the bounds
        for p in actor.parameters():
            p.mul_(3.0)
    return policy_bytes(actor, SPEC.action_low, SPEC.action_high, 5, obs_norm=obs_norm)


def observations(n: int, seed: int = 1) -> np.ndarray:
    """Random observations on several scales, and the rows every path must refuse or clip:
    NaN, infinities and values near float32's largest (refused raw, clipped when normalised)."""
    rng = np.random.default_rng(seed)
    obs = (rng.normal(size=(n, SPEC.obs_dim)) * rng.choice([0.1, 3.0, 30.0], (n, 1))).astype(
        np.float32
    )
    obs[0, 2] = np.nan
    obs[1, 4] = np.inf
    obs[2, 0] = -np.inf
    obs[3, 7] = 3e38
    return obs


def onnx_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    assert [o.name for o in session.get_outputs()] == ["action"]
    (actions,) = session.run(None, {"obs": obs})
    return actions


def assert_matches(path: Path, policy_data: bytes, safe_action: tuple[float, ...] | None) -> None:
    """The ONNX model at ``path`` answers ``act(obs, deterministic=True)``, on a batch and one by
    one, within ATOL."""
    policy = load_policy(policy_data, safe_action=safe_action)
    obs = observations(256)
    got = onnx_actions(path, obs)
    want = policy.act(obs, deterministic=True)
    assert got.dtype == np.float32 and got.shape == (256, SPEC.action_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    for row in (0, 1, 3, 10, 200):  # one observation: a batch of one
        single = onnx_actions(path, obs[row : row + 1])
        np.testing.assert_allclose(single[0], policy.act(obs[row], deterministic=True), atol=ATOL)
    # the refused and non-finite rows answer the safe action, inside the bounds everywhere
    safe = policy.safe_action
    np.testing.assert_array_equal(got[:3], np.repeat(safe[None], 3, axis=0))
    assert (got >= np.float32(SPEC.action_low)).all() and (
        got <= np.float32(SPEC.action_high)
    ).all()
    # actions spread over the bounds: the comparison is not between two constant answers
    assert (got.max(0) - got.min(0) > 0.3 * (np.array(SPEC.action_high) - SPEC.action_low)).all()


def test_file_form_with_normalisation(tmp_path: Path):
    norm = normalization(0)
    data = version_file(obs_norm=norm)
    file = tmp_path / "v5.safetensors"
    file.write_bytes(data)
    out = tmp_path / "policy.onnx"
    done = run_cli("export-onnx", str(file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "with its observation normalisation" in done.stdout
    assert_matches(out, data, None)  # a file alone: the default safe action (zeros clipped)
    # The normalisation is in the graph: the same actor on raw observations answers otherwise.
    raw = load_policy(version_file(obs_norm=None))
    obs = observations(256)[4:]
    assert np.abs(onnx_actions(out, obs) - raw.act(obs, deterministic=True)).max() > 0.1
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["robot_sac.version"] == "5"
    assert meta["robot_sac.sha256"] == load_policy(data).sha256
    assert meta["robot_sac.obs_normalization"] == "true"
    assert json.loads(meta["robot_sac.action_high"]) == [1.0, 3.0, 0.5]


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_both_families_in_process(tmp_path: Path, family: str):
    from robot_sac.onnx_export import export_onnx

    for norm in (None, normalization(1)):
        data = version_file(family, norm, seed=3)
        policy = load_policy(data, safe_action=SPEC.safe_action)
        out = tmp_path / f"{family}.onnx"
        assert export_onnx(policy, out) == out.stat().st_size
        assert_matches(out, data, SPEC.safe_action)


def test_data_dir_form_picks_the_version_and_the_task_safe_action(tmp_path: Path):
    data_dir = tmp_path / "data"
    store = open_store(SPEC, data_dir)
    first = version_file(seed=1)  # format 1
    normed = version_file(obs_norm=normalization(2), seed=2)  # format 2
    store.register_policy(first, first=True)
    store.register_policy(normed)
    stored = {r.version: store.policy_bytes(r) for r in store.list_policies()}
    store.close()
    newest, v0 = tmp_path / "newest.onnx", tmp_path / "v0.onnx"
    done = run_cli("export-onnx", "--data-dir", str(data_dir), "--out", str(newest))
    assert done.returncode == 0, done.stderr
    assert "v1 of" in done.stdout
    assert_matches(newest, stored[1], SPEC.safe_action)
    done = run_cli("export-onnx", "--data-dir", str(data_dir), "--version", "0", "--out", str(v0))
    assert done.returncode == 0, done.stderr
    assert_matches(v0, stored[0], SPEC.safe_action)
    meta = {p.key: p.value for p in onnx.load(str(v0)).metadata_props}
    assert meta["robot_sac.version"] == "0" and meta["robot_sac.obs_normalization"] == "false"
    assert json.loads(meta["robot_sac.safe_action"]) == [0.5, 0.0, 0.25]


def test_bad_inputs_are_one_line(tmp_path: Path):
    data_dir = tmp_path / "data"
    store = open_store(SPEC, data_dir)
    store.register_policy(version_file(), first=True)
    store.close()
    text = tmp_path / "notes.safetensors"
    text.write_text("not a policy at all\n")
    good = tmp_path / "good.safetensors"
    good.write_bytes(version_file())
    cases = {
        "cannot read": [str(tmp_path / "missing.safetensors")],
        "is not a usable robot_sac policy": [str(text)],
        "has no version 9": ["--data-dir", str(data_dir), "--version", "9"],
        "holds no robot_sac store": ["--data-dir", str(tmp_path / "nowhere")],
        "not both": [str(good), "--data-dir", str(data_dir)],
        "a FILE is one version already": [str(good), "--version", "0"],
        "cannot write": [str(good), "--out", str(good / "x.onnx")],  # a file as a folder
    }
    for expected, args in cases.items():
        out = [] if "--out" in args else ["--out", str(tmp_path / "x.onnx")]
        done = run_cli("export-onnx", *args, *out, cwd=tmp_path)
        # what was asked for is wrong: a usage error (2); the output failing at run time: 1
        code = 1 if expected == "cannot write" else 2
        assert done.returncode == code, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("robot-sac: "), (args, done.stderr)
        assert expected in lines[0], (expected, lines[0])
    assert not (tmp_path / "x.onnx").exists()
