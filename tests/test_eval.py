"""`robot-sac eval`: deterministic return and success of a version on held-out seeds of a real
simulator, from a data directory, a file or a running service, with an optional video.

The version that should succeed is built by hand: a one-hidden-layer actor that moves the
Panda's fingertip towards the goal (``relu(d) - relu(-d) = d``, ``loc = 20 d``), behind an
observation normalisation far from the identity that its first layer undoes. It reaches every
goal, so a wrong observation layout, a lost normalisation or a wrong action scale fails the
success check; a random actor beside it barely succeeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_sac.networks import Actor
from robot_sac.normalization import ObsNormalization
from robot_sac.policy import load_policy, policy_bytes
from robot_sac.schemas import TaskSpec
from robot_sac.store import open_store
from robot_sac.train_local import EVAL_SEED, rollout
from tests.servers import ProcessService, free_port, write_task

ENV = "PandaReachDense-v3"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_sac.cli", *args], capture_output=True, text=True, timeout=600
    )


def eval_json(*args: str) -> dict:
    done = run_cli("eval", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # stdout is the JSON alone (PyBullet's prints silenced)


def reaching_version(spec: TaskSpec, gain: float = 20.0) -> bytes:
    """A format-2 version that drives the fingertip (achieved_goal, obs[0:3]) to the goal
    (desired_goal, obs[3:6]) through a normalisation with uneven statistics."""
    rng = np.random.default_rng(7)
    mean = (rng.normal(size=spec.obs_dim) * 0.2).astype(np.float32)
    std = rng.uniform(0.2, 2.0, spec.obs_dim).astype(np.float32)
    actor = Actor(spec.obs_dim, spec.action_dim, (6,))
    w1, b1 = torch.zeros(6, spec.obs_dim), torch.zeros(6)
    w2 = torch.zeros(6, 6)
    for k in range(3):  # d_k = desired_k - achieved_k, rebuilt from the normalised inputs
        w1[k, 3 + k], w1[k, k] = float(std[3 + k]), -float(std[k])
        b1[k] = float(mean[3 + k] - mean[k])
        w2[k, k], w2[k, 3 + k] = gain, -gain
    w1[3:], b1[3:] = -w1[:3], -b1[:3]
    with torch.no_grad():
        actor.net[0].weight.copy_(w1)
        actor.net[0].bias.copy_(b1)
        actor.net[2].weight.copy_(w2)
        actor.net[2].bias.zero_()
    norm = ObsNormalization(mean=mean, std=std)
    return policy_bytes(actor, spec.action_low, spec.action_high, 0, obs_norm=norm)


@pytest.fixture(scope="module")
def panda(tmp_path_factory: pytest.TempPathFactory) -> tuple[TaskSpec, Path]:
    """A data directory of the Panda reach: v0 a random actor, v1 the reaching one."""
    from robot_sac.sim.envs import task_spec

    spec = task_spec(ENV)
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    random_actor = Actor(spec.obs_dim, spec.action_dim)
    store = open_store(spec, root / "data")
    store.register_policy(
        policy_bytes(random_actor, spec.action_low, spec.action_high, 0), first=True
    )
    store.register_policy(reaching_version(spec))
    store.close()
    return spec, root / "data"


def test_data_dir_newest_and_pinned_version(panda: tuple[TaskSpec, Path]):
    spec, data = panda
    best = eval_json("--data-dir", str(data), "--episodes", "4")  # env: the store's task
    assert best["env"] == ENV and best["version"] == 1 and best["deterministic"] is True
    assert best["episodes"] == 4 and best["first_seed"] == EVAL_SEED == 1_000_000
    assert best["success_rate"] == 1.0 and best["successes"] == [True] * 4
    # the same episodes as an in-process rollout of that version on the same seeds
    from robot_sac.sim.envs import make_env

    store_policy = load_policy(
        (data / "policies" / "v1.safetensors").read_bytes(), safe_action=spec.safe_action
    )
    env = make_env(ENV)
    try:
        want = rollout(lambda o: store_policy.act(o, deterministic=True), env, 4, EVAL_SEED)
    finally:
        env.close()
    assert best["returns"] == pytest.approx([e.return_ for e in want], abs=1e-9)
    assert best["lengths"] == [e.length for e in want]
    assert best["mean_return"] == pytest.approx(np.mean(best["returns"]))

    random = eval_json("--data-dir", str(data), "--version", "0", "--env", ENV, "--episodes", "4")
    assert random["version"] == 0
    assert random["mean_return"] < best["mean_return"] - 1.0
    assert random["success_rate"] < 1.0
    # other seeds, other episodes
    moved = eval_json("--data-dir", str(data), "--episodes", "4", "--seed", "5")
    assert moved["first_seed"] == 5 and moved["returns"] != best["returns"]

    # the human-readable form
    done = run_cli("eval", "--data-dir", str(data), "--episodes", "2")
    assert done.returncode == 0, done.stderr
    assert "success   100% (2/2)" in done.stdout and "v1 of" in done.stdout
    assert "argv[" not in done.stdout


def test_a_version_file_needs_env(panda: tuple[TaskSpec, Path]):
    _, data = panda
    file = data / "policies" / "v1.safetensors"
    result = eval_json(str(file), "--env", ENV, "--episodes", "2")
    assert result["policy"] == str(file) and result["success_rate"] == 1.0
    done = run_cli("eval", str(file))
    assert done.returncode == 2
    assert done.stderr.strip() == "robot-sac: give --env ID: the Gymnasium env to evaluate in"


@pytest.mark.slow  # end to end: a service process and two evaluations
def test_url_evaluates_what_the_service_serves(tmp_path: Path, panda: tuple[TaskSpec, Path]):
    spec, data = panda
    # A service of its own, on a copy of the data directory (it serves the newest: v1).
    import shutil

    served = tmp_path / "data"
    shutil.copytree(data, served)
    service = ProcessService(served, write_task(tmp_path / "task.json", spec)).start()
    try:
        via_url = eval_json("--url", service.url, "--env", ENV, "--episodes", "4")
    finally:
        service.terminate()
    direct = eval_json("--data-dir", str(data), "--episodes", "4")
    assert via_url["policy"] == service.url
    assert via_url["served_versions"] == [1] and via_url["version"] == 1
    assert via_url["held_acts"] == 0
    assert via_url["success_rate"] == 1.0
    # the service answers small batches in numpy: the same actions within float32 rounding
    assert via_url["returns"] == pytest.approx(direct["returns"], abs=1e-3)
    assert via_url["lengths"] == direct["lengths"]


@pytest.mark.slow  # renders and encodes frames, then plays the episodes again without
def test_video_has_one_frame_per_reset_and_step(tmp_path: Path, panda: tuple[TaskSpec, Path]):
    import imageio.v3 as iio

    _, data = panda
    out = tmp_path / "reach.mp4"
    result = eval_json(
        "--data-dir", str(data), "--version", "0", "--episodes", "3", "--video", str(out),
        "--video-episodes", "2",
    )  # fmt: skip
    video = result["video"]
    # the first two episodes: their reset frame and one per step
    frames = sum(result["lengths"][:2]) + 2
    assert video == {"path": str(out), "episodes": 2, "frames": frames, "fps": 25.0}
    assert out.stat().st_size > 10_000
    decoded = iio.imread(out)
    assert decoded.shape == (frames, 320, 480, 3)
    assert decoded.std() > 10  # an image, not a blank
    # recording changes nothing in the simulation
    plain = eval_json("--data-dir", str(data), "--version", "0", "--episodes", "3")
    assert plain["returns"] == result["returns"]


def test_write_video_gif(tmp_path: Path):
    from PIL import Image

    from robot_sac.sim.video import write_video

    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(5)]
    write_video(tmp_path / "a.gif", frames, fps=10)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (48, 32)
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0


def test_bad_inputs_are_one_line(tmp_path: Path, panda: tuple[TaskSpec, Path]):
    _, data = panda
    cases = {
        "--url evaluates what the service serves": ["--url", "http://x", "--data-dir", str(data)],
        "give a .mp4 or .gif file": ["--data-dir", str(data), "--video", "out.avi"],
        "cannot make Gymnasium env 'Nope-v0'": ["--data-dir", str(data), "--env", "Nope-v0"],
        "does not fit Pendulum-v1": ["--data-dir", str(data), "--env", "Pendulum-v1"],
        "has no version 3": ["--data-dir", str(data), "--version", "3"],
        "cannot reach the service": [
            *("--url", f"http://127.0.0.1:{free_port()}", "--env", ENV),
        ],
    }
    for expected, args in cases.items():
        done = run_cli("eval", *args, "--episodes", "1")
        # what was asked for is wrong: a usage error (2); the service failing at run time: 1
        code = 1 if expected == "cannot reach the service" else 2
        assert done.returncode == code, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("robot-sac: "), (args, done.stderr)
        assert expected in lines[0], (expected, lines[0])
    assert not (tmp_path / "out.avi").exists()
