"""The task spec: validation, the default safe action, task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from robot_sac.config import SACConfig, tuned_config
from robot_sac.schemas import TaskSpec


def test_default_safe_action_is_zero_clipped_into_the_bounds():
    spec = TaskSpec(obs_dim=3, action_low=(-1.0, 0.5, -3.0), action_high=(1.0, 2.0, -1.0))
    assert spec.safe_action == (0.0, 0.5, -1.0)
    assert spec.action_dim == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action_low": (-1.0, -1.0), "action_high": (1.0,)}, "action_low has 2 entries"),
        ({"action_low": (1.0,), "action_high": (1.0,)}, "must be below"),
        ({"action_low": (float("-inf"),), "action_high": (1.0,)}, "must be finite"),
        ({"action_low": (-1.0,), "action_high": (1.0,), "safe_action": (2.0,)}, "not inside"),
        ({"action_low": (-1.0,), "action_high": (1.0,), "safe_action": (0.0, 0.0)}, "entries"),
        ({"obs_dim": 0, "action_low": (-1.0,), "action_high": (1.0,)}, "greater than or equal"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(fields, message):
    data = {"obs_dim": 2, **fields}
    with pytest.raises(ValidationError, match=message):
        TaskSpec(**data)


def test_task_files_json_and_toml(tmp_path: Path):
    (tmp_path / "arm.json").write_text(
        json.dumps(
            {"obs_dim": 7, "action_low": [-1, -1], "action_high": [1, 1], "sac": {"gamma": 0.95}}
        )
    )
    spec = TaskSpec.from_file(tmp_path / "arm.json")
    assert spec.name == "arm" and spec.sac.gamma == 0.95 and spec.sac.lr == 3e-4
    (tmp_path / "gripper.toml").write_text(
        "obs_dim = 4\naction_low = [0.0]\naction_high = [0.08]\nsafe_action = [0.08]\n"
        "[sac]\nlr = 0.001\nhidden = [64, 64]\n"
    )
    spec = TaskSpec.from_file(tmp_path / "gripper.toml")
    assert spec.safe_action == (0.08,) and spec.sac.hidden == (64, 64)
    (tmp_path / "bad.toml").write_text(
        "obs_dim = 4\naction_low = [0.0]\naction_high = [1.0]\n[sac]\nlr2 = 1\n"
    )
    with pytest.raises(ValidationError, match="lr2"):
        TaskSpec.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match=r"\.json or \.toml"):
        TaskSpec.from_file(tmp_path / "task.yaml")


def test_sac_config_is_frozen_with_the_usual_defaults():
    cfg = SACConfig()
    assert (cfg.lr, cfg.batch_size, cfg.gamma, cfg.tau, cfg.hidden) == (
        3e-4,
        256,
        0.99,
        0.005,
        (256, 256),
    )
    assert cfg.policy_family == "tanh_normal"
    with pytest.raises(ValidationError):
        cfg.gamma = 0.5  # type: ignore[misc]
    assert tuned_config("Pendulum-v1").lr == 1e-3
    assert tuned_config("SomethingElse-v0") == SACConfig()
