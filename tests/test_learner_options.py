"""The learner with the critic options at a high update-to-data ratio, a restart after the options
changed, and how the options reach it (task files, --sac)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.cli.resolve import with_sac_overrides
from robot_sac.config import SACConfig
from robot_sac.policy import load_policy
from robot_sac.schemas import TaskSpec
from robot_sac.services.learner import Learner
from robot_sac.settings import Settings
from robot_sac.store import open_store
from tests.test_learner import transitions

OPTIONS = {"critic_layer_norm": True, "num_critics": 4, "critic_subset": 2}


def small_task(**sac: object) -> TaskSpec:
    cfg = {"hidden": (16, 16), "batch_size": 16, "learning_starts": 50, **sac}
    return TaskSpec(
        name="small",
        obs_dim=3,
        action_low=(-2.0,),
        action_high=(2.0,),
        sac=SACConfig.model_validate(cfg),
    )


def make_learner(tmp_path: Path, spec: TaskSpec, **settings: object) -> Learner:
    store = open_store(spec, tmp_path)
    ensure_initial_policy(store)
    return Learner(
        Settings(data_dir=tmp_path, **settings), spec, store, torch.device("cpu"), tensorboard=False
    )


def test_the_learner_runs_the_critic_options_at_twenty_updates_per_transition(tmp_path: Path):
    spec = small_task(utd=20.0, **OPTIONS)
    learner = make_learner(tmp_path, spec, publish_every=50)
    learner.store.append(transitions(0, 60))
    learner.start()
    assert learner.sac.critic.n == 4 and learner.sac.critic.layer_norm
    assert learner.update_budget() == 200  # 20 per transition past learning_starts (50)
    learner.run(lambda: False, max_updates=200)
    for _ in range(5):  # the budget is spent: no more updates until more data
        assert learner.step() == 0
    assert learner.sac.updates == 200 and float(learner.sac.skipped_updates) == 0.0
    status = learner.status()
    assert status.utd == 20.0 and status.state == "running"
    assert all(v is not None and np.isfinite(v) for v in status.losses.values())
    learner.close()
    # the version file holds the actor alone, which loads like any other
    newest = learner.store.latest_policy()
    assert newest is not None and newest.updates == 200
    policy = load_policy(learner.store.policy_bytes(newest), sha256=newest.sha256)
    for a, b in zip(policy.actor.parameters(), learner.sac.actor.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    learner.store.close()


def test_a_restart_with_other_critic_options_keeps_the_actor_and_the_counters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    first = make_learner(tmp_path, small_task(), publish_every=40)
    first.store.append(transitions(0, 150))
    first.start()
    first.run(lambda: False, max_updates=100)
    first.close()  # publishes the actor, checkpoints the twin critics
    actor = [p.detach().clone() for p in first.sac.actor.parameters()]
    consumed, updates = first.counters.consumed, first.sac.updates
    first.store.close()

    second = make_learner(tmp_path, small_task(**OPTIONS), publish_every=40)
    with caplog.at_level(logging.WARNING, logger="robot_sac.learner"):
        second.start()  # the checkpoint's twin critics do not fit four LayerNorm critics
    assert "do not fit the task's SAC settings" in caplog.text
    assert second.sac.critic.n == 4 and second.sac.critic.layer_norm
    assert second.sac.updates == updates and second.counters.consumed == consumed
    for a, b in zip(actor, second.sac.actor.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    second.store.append(transitions(150, 20))
    second.run(lambda: False, max_updates=updates + 20)
    assert second.sac.updates == updates + 20 and second.sac.is_finite()
    second.close()
    second.store.close()


def test_a_task_file_carries_the_options(tmp_path: Path):
    path = tmp_path / "arm.toml"
    path.write_text(
        "obs_dim = 4\naction_low = [-1.0]\naction_high = [1.0]\n\n[sac]\n"
        "critic_layer_norm = true\nnum_critics = 10\ncritic_subset = 2\nprior_share = 0.5\n"
        "utd = 20\n"
    )
    cfg = TaskSpec.from_file(path).sac
    assert cfg.critic_layer_norm and (cfg.num_critics, cfg.critic_subset) == (10, 2)
    assert cfg.prior_share == 0.5 and cfg.utd == 20.0
    assert TaskSpec(obs_dim=1, action_low=(-1,), action_high=(1,)).sac == SACConfig()


def test_sac_flag_overrides_the_tasks_settings_and_refuses_bad_ones():
    spec = small_task(lr=1e-3)
    spec2 = with_sac_overrides(spec, '{"prior_share": 0.5, "critic_layer_norm": true}')
    assert spec2.sac.prior_share == 0.5 and spec2.sac.critic_layer_norm
    assert spec2.sac.lr == 1e-3 and spec2.sac.hidden == (16, 16)  # the rest kept
    assert spec2.model_copy(update={"sac": spec.sac}) == spec
    for bad, says in [
        ('{"num_critics": 1}', "critic_subset=2 exceeds num_critics=1"),
        ('{"prior_share": 2}', "prior_share"),
        ('{"critics": 3}', "critics"),  # a misspelt name is refused, not ignored
        ("[1]", "JSON object"),
        ("{", "not JSON"),
    ]:
        with pytest.raises(typer.BadParameter, match=says) as info:
            with_sac_overrides(spec, bad)
        assert "\n" not in str(info.value)
